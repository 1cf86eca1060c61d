#!/bin/sh
# include/pathkernel.h opens with examples/quickstart.c as its example: check
# that the two are the same text (CTest "header_example"). In the header the
# program's lines are indented by " *     " (an empty line: " *"); the
# example runs from its first line, "// quickstart.c...", to the last line
# so indented, before the comment's prose goes on.
# usage: header_example.sh SOURCE_DIR
set -eu
src=$1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pk-header-example.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
awk '
    !on && /^ \*     \/\/ quickstart\.c/ { on = 1 }
    on && !/^ \*(     |$)/ { exit }
    on {
        line = $0
        sub(/^ \*(     )?/, "", line)
        if (line == "") { blank++; next }
        while (blank > 0) { print ""; blank-- }
        print line
    }
' "$src/include/pathkernel.h" >"$tmp/example.c"
if [ ! -s "$tmp/example.c" ]; then
    echo "FAIL: include/pathkernel.h has no example starting with ' *     // quickstart.c'" >&2
    exit 1
fi
if ! diff -u "$src/examples/quickstart.c" "$tmp/example.c"; then
    echo "FAIL: the example in include/pathkernel.h differs from examples/quickstart.c (diff above: - file, + header)" >&2
    exit 1
fi
echo "include/pathkernel.h's example is examples/quickstart.c ($(wc -l <"$tmp/example.c") lines)"
