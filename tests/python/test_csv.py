"""The CSV reader against pandas: a table of CSV and TSV files as people have
them (comma, semicolon or tab; with a header or without; the labels first, in
the middle or last, named or by index; integer or text labels; CRLF; quoted
fields holding the separator and doubled quotes; gzipped), each loaded by
pk_data_load (through tests/tools/pk_data_dump) and by pandas' read_csv with
the matching options, and compared exactly: the features, the class of every
example, the class names (the sorted distinct labels) and the feature names
(the header's). Then the malformed variants: each exits 2 naming the file,
the line and what is wrong."""
import gzip
import io

import numpy as np
import pytest

pd = pytest.importorskip("pandas")  # Debian's python3-pandas (scripts/deps.sh --test)

from test_data_formats import dump, same  # noqa: E402

ROWS = [  # (sepal length, sepal width, species, petal length, count)
    (5.1, 3.5, "setosa", 1.4, 0),
    (4.9, 3.0, "setosa", 1.4, 0),
    (7.0, 3.2, "versicolor", 4.7, 1),
    (6.4, 3.2, "versicolor", 4.5, 1),
    (6.3, 3.3, "virginica", 6.0, 2),
    (5.8, 2.7, "virginica", 5.1, 2),
    (-0.25, 1e-3, "setosa", 2.5e10, 0),
]
NAMES = ["sepal length (cm)", "sepal width; cm", "species", "petal length, cm", "count"]


def write_table(columns, labels, sep, header, crlf=False, quote_all=False):
    """The ROWS' columns `columns` (indices into a row) as text, a header of
    NAMES first when asked; `labels` maps a species to its written label;
    fields holding sep or '"' are quoted (every field with quote_all)."""
    def field(s):
        if quote_all or sep in s or '"' in s:
            return '"' + s.replace('"', '""') + '"'
        return s

    def value(v):
        return labels(v) if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v)
    lines = [sep.join(field(NAMES[c]) for c in columns)] if header else []
    lines += [sep.join(field(value(r[c])) for c in columns) for r in ROWS]
    end = "\r\n" if crlf else "\n"
    return end.join(lines) + end


PLAIN = lambda s: s                                       # noqa: E731
ODD = {"setosa": 'I. "setosa", Fisher', "versicolor": "I; versicolor", "virginica": "virginica"}
QUOTED = lambda s: ODD[s]                                 # noqa: E731

# name, file, columns (into a row), labels, sep written, header, CRLF,
# quote every field, --sep, --label-column, the label column for pandas
VARIANTS = [
    ("comma_header_last_int", "d.csv", (0, 1, 3, 4), PLAIN, ",", True, False, False, None, None, -1),
    ("comma_header_last_text", "d.csv", (0, 1, 3, 2), PLAIN, ",", True, False, False, None, None, -1),
    ("comma_noheader_last_text", "d.csv", (0, 1, 3, 2), PLAIN, ",", False, False, False, None, None, -1),
    ("semicolon_header_first_by_name", "d.csv", (2, 0, 1, 3), PLAIN, ";", True, False, False, None, "species", 0),
    ("semicolon_noheader_first_by_index_int", "d.csv", (4, 0, 1, 3), PLAIN, ";", False, False, False, None, "0", 0),
    ("tab_header_middle_by_name", "d.csv", (0, 1, 2, 3), PLAIN, "\t", True, False, False, None, "species", 2),
    ("tsv_noheader_middle_by_index", "d.tsv", (0, 2, 1, 3), PLAIN, "\t", False, False, False, None, "1", 1),
    ("tsv_gz_header_middle_negative_index", "d.tsv.gz", (0, 1, 2, 3), PLAIN, "\t", True, False, False, None, "-2", 2),
    ("comma_crlf_header_last_text", "d.csv", (0, 1, 3, 2), PLAIN, ",", True, True, False, None, None, -1),
    ("comma_crlf_noheader_first_int", "d.csv", (4, 0, 1, 3), PLAIN, ",", False, True, False, None, "0", 0),
    ("comma_quoted_labels_with_separator", "d.csv", (0, 1, 3, 2), QUOTED, ",", True, False, False, None, None, -1),
    ("semicolon_quoted_labels_first", "d.csv", (2, 0, 1, 3), QUOTED, ";", True, True, False, None, "species", 0),
    ("comma_everything_quoted_crlf", "d.csv", (0, 2, 1, 3), QUOTED, ",", True, True, True, None, "species", 1),
    ("tab_quoted_noheader_by_index", "d.tsv", (2, 0, 1, 3), QUOTED, "\t", False, False, False, None, "0", 0),
    ("gz_comma_header_middle_by_name_int", "d.csv.gz", (0, 4, 1, 3), PLAIN, ",", True, False, False, None, "count", 1),
    ("semicolon_given_sep", "d.csv", (0, 1, 3, 2), QUOTED, ";", True, False, False, ";", None, -1),
    ("names_with_separators_by_name", "d.csv", (3, 2, 1, 0), PLAIN, ",", True, False, False, None, "species", 1),
]


def write(path, text):
    data = text.encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("v", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_csv_variant_loads_as_pandas_reads_it(tool, tmp_path, v):
    name, fname, columns, labels, sep, header, crlf, quote_all, given_sep, label_column, lc = v
    text = write_table(columns, labels, sep, header, crlf, quote_all)
    path = write(tmp_path / fname, text)
    args = []
    if given_sep:
        args += ["--sep", given_sep]
    if label_column is not None:
        args += ["--label-column", label_column]
    x, y, meta = dump(tool, path, tmp_path / "out", *args)

    df = pd.read_csv(io.StringIO(text), sep=sep, header=0 if header else None)
    lab = df.iloc[:, lc]
    feats = df.drop(columns=df.columns[lc])
    assert same(x, feats.to_numpy(dtype=np.float64)), (x, feats)
    classes = [line[6:] for line in (tmp_path / "out" / "meta.txt").read_text().splitlines()
               if line.startswith("class ")]
    if lab.dtype == object:     # text labels: the classes are their sorted distinct values
        want = sorted(set(lab))
        assert classes == want
        assert same(y[:, 0], np.array([want.index(s) for s in lab], dtype=np.float64))
    else:                        # numbers: the labels themselves, as always
        assert classes == []
        assert same(y[:, 0], lab.to_numpy(dtype=np.float64))
    features = [line[8:] for line in (tmp_path / "out" / "meta.txt").read_text().splitlines()
                if line.startswith("feature ")]
    assert features == (list(feats.columns) if header else [])


def test_integer_label_csv_loads_as_before(tool, tmp_path):
    """A numeric CSV (the demo's digits) loads to the same arrays and the
    same fingerprint whatever the label and separator options that say what
    the defaults already do."""
    rng = np.random.default_rng(3)
    xy = np.c_[rng.normal(size=(50, 4)), rng.integers(0, 3, 50)]
    p = tmp_path / "d.csv"
    np.savetxt(p, xy, delimiter=",", fmt="%.17g", header="a,b,c,d,y", comments="")
    x0, y0, m0 = dump(tool, p, tmp_path / "o0")
    x1, y1, m1 = dump(tool, p, tmp_path / "o1", "--sep", ",", "--label-column", "y")
    x2, y2, m2 = dump(tool, p, tmp_path / "o2", "--label-column", "-1")
    for x, y, m in ((x1, y1, m1), (x2, y2, m2)):
        assert same(x, x0) and same(y, y0) and m["fingerprint"] == m0["fingerprint"]
    assert same(x0, xy[:, :4]) and same(y0[:, 0], xy[:, 4])


def test_class_names_given_map_text_labels_in_their_order(tool, tmp_path):
    p = write(tmp_path / "d.csv", "a,b,label\n1,2,cat\n3,4,dog\n5,6,cat\n7,8,1\n")
    names = tmp_path / "classes.txt"
    names.write_text("dog\ncat\n")
    x, y, meta = dump(tool, p, tmp_path / "o", "--class-names", names)
    assert y[:, 0].tolist() == [1, 0, 1, 1]   # '1' is no name: class index 1
    got = [ln[6:] for ln in (tmp_path / "o" / "meta.txt").read_text().splitlines() if ln.startswith("class ")]
    assert got == ["dog", "cat"]


def test_unseen_label_allowed_is_nan_with_a_warning(tool, tmp_path):
    p = write(tmp_path / "q.csv", "a,b,label\n1,2,cat\n3,4,bird\n5,6,bird\n")
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    x, y, meta = dump(tool, p, tmp_path / "o", "--class-names", names, "--allow-unseen")
    assert y[0, 0] == 0 and np.isnan(y[1:, 0]).all()
    assert "2 labels are not among the 2 known classes" in meta["warning"]
    assert "'bird' on line 3" in meta["warning"]


def test_class_names_name_integer_labels_of_other_formats(tool, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    np.save(tmp_path / "y.npy", np.array([0, 2, 1]))
    names = tmp_path / "n.txt"
    names.write_text("zero\none\ntwo\n")
    spec = f"npy:{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}"
    x, y, meta = dump(tool, spec, tmp_path / "o", "--class-names", names)
    got = [ln[6:] for ln in (tmp_path / "o" / "meta.txt").read_text().splitlines() if ln.startswith("class ")]
    assert got == ["zero", "one", "two"] and y[:, 0].tolist() == [0, 2, 1]
    names.write_text("zero\none\n")
    p = dump(tool, spec, tmp_path / "o2", "--class-names", names, expect_rc=2)
    assert "example 1 (0-based): label 2 is not one of the 2 classes named (class_names), 0..1" in p.stderr


# name, file name, content, extra options, what the message must say
MALFORMED = [
    ("label_column_name_missing", "d.csv", "a,b,species\n1,2,x\n", ["--label-column", "kind"],
     "line 1: no column named 'kind'"),
    ("label_column_name_without_header", "d.csv", "1,2,x\n3,4,y\n", ["--label-column", "species"],
     "line 1: no column named 'species'"),
    ("label_column_index_out_of_range", "d.csv", "1,2,x\n3,4,y\n", ["--label-column", "3"],
     "line 1: no column 3 for the labels"),
    ("label_column_negative_out_of_range", "d.csv", "1,2,x\n3,4,y\n", ["--label-column", "-4"],
     "line 1: no column -4 for the labels"),
    ("ragged_row", "d.csv", "a;b;c\n1;2;x\n3;4;y\n5;6\n", [], "line 4: 2 columns, but the header on line 1 has 3"),
    ("ragged_row_noheader", "d.tsv", "1\t2\tx\n3\t4\ty\n5\t6\t7\t8\n", [], "line 3: 4 columns, expected 3"),
    ("ragged_row_crlf_after_quoted_newline", "d.csv", 'a,b,c\r\n1,2,"x\r\ny"\r\n3,4\r\n', [],
     "line 4: 2 columns"),
    ("text_in_a_feature_column", "d.csv", "a,b,c\n1,2,x\n3,big,y\n", [], "line 3, column 2: 'big' is not a number"),
    ("text_feature_when_labels_first", "d.csv", "1,2,x\n3,4,y\n", ["--label-column", "0"],
     "line 2, column 3: 'y' is not a number"),  # line 1 has text: a header
    ("unclosed_quote", "d.csv", 'a,b,c\n1,2,"x\n3,4,y\n', [], "line 2, column 3: the quoted field opened here is never closed"),
    ("text_after_closing_quote", "d.csv", 'a,b,c\n1,2,"x"y\n', [], "line 2, column 3: text after the closing quote"),
    ("empty_label", "d.csv", "a,b,c\n1,2,x\n3,4,\n", [], "line 3, column 3: empty field"),
    ("label_with_a_line_break", "d.csv", 'a,b,c\n1,2,"x\ny"\n3,4,z\n', [], "line 2, column 3: label 'x?y' holds"),
    ("unseen_class", "q.csv", "a,b,label\n1,2,cat\n3,4,dog\n5,6,bird\n", ["--class-names", "CLASSES"],
     "line 4, column 3: label 'bird' is not one of the 2 known classes (cat, dog)"),
    ("sep_quote", "d.csv", "1,2,3\n", ["--sep", '"'], "cannot separate fields"),
    ("label_column_on_npy", "npy", None, ["--label-column", "0"], "for CSV and TSV files only"),
]


@pytest.mark.parametrize("m", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_csv_exits_2_naming_file_line_and_reason(tool, tmp_path, m):
    name, fname, content, extra, want = m
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    extra = [str(tmp_path / "classes.txt") if e == "CLASSES" else e for e in extra]
    if content is None:
        np.save(tmp_path / "x.npy", np.zeros((2, 2)))
        np.save(tmp_path / "y.npy", np.zeros(2))
        spec = f"npy:{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}"
    else:
        spec = write(tmp_path / fname, content)
    p = dump(tool, spec, tmp_path / "o", *extra, expect_rc=2)
    assert str(spec) in p.stderr or str(tmp_path / "x.npy") in p.stderr, p.stderr
    assert want in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1
