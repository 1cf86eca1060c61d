"""`pathkernel report` and `pathkernel demo`: the HTML report is one
self-contained file (no URLs, no scripts, no external style), every figure is
there and drawn, its PNG data URIs are valid PNGs whose pixels are the data's
images, and it renders in headless Chromium (skipped when Chromium is not
installed). `demo` prints the table of errors by quadrature rule with gl4 at
rounding level and writes its report."""
import gzip
import os
import pathlib
import re
import shutil
import struct
import subprocess
import tempfile
import zlib

import numpy as np
import pytest

from conftest import BUILD_DIR, SOURCE_DIR

PK = BUILD_DIR / "pathkernel"
DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"
SLOW = os.environ.get("PK_SANITIZE") == "1"


def pk(*args, cwd=None):
    r = subprocess.run([str(PK), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert r.returncode == 0, f"pathkernel {' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


# ------------------------------------------------------------ a small PNG reader

def png_decode(data):
    """(width, height, channels, pixels as a (h, w, channels) uint8 array) of an
    8-bit non-interlaced PNG; checks the signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, idat, ihdr, seen_end = 8, [], None, False
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in chunk {kind!r}"
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            seen_end = True
            break
        pos += 12 + n
    assert ihdr and seen_end and idat, "IHDR, IDAT or IEND missing"
    w, h, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and interlace == 0, (depth, interlace)
    ch = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    raw = zlib.decompress(b"".join(idat))
    stride = w * ch
    assert len(raw) == h * (stride + 1), "IDAT has the wrong size"
    try:  # fast path for big images (a screenshot); the small ones use our own unfiltering
        if w * h < 100000:
            raise ImportError
        import io
        from PIL import Image
        img = np.asarray(Image.open(io.BytesIO(data)))
        return w, h, ch, img.reshape(h, w, ch)
    except ImportError:
        pass
    out = bytearray(h * stride)
    prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) >> 1
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                raise AssertionError(f"bad filter type {f}")
            line[i] = (line[i] + pred) & 0xFF
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return w, h, ch, np.frombuffer(bytes(out), np.uint8).reshape(h, w, ch)


def test_png_reader_and_base64_against_known_bytes(libpathkernel):
    """pk_png_encode/pk_base64 (the report's own, src/report/svg.h) through
    ctypes: a 3 x 2 grey image round-trips."""
    import base64
    import ctypes
    lib = libpathkernel
    lib.pk_png_encode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                                  ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
    lib.pk_base64.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.pk_base64.restype = ctypes.c_void_p
    libc = ctypes.CDLL(None)
    libc.free.argtypes = [ctypes.c_void_p]
    pix = bytes([0, 50, 100, 150, 200, 255])
    out, n = ctypes.c_void_p(), ctypes.c_size_t()
    assert lib.pk_png_encode(pix, 2, 3, 1, ctypes.byref(out), ctypes.byref(n)) == 0
    png = ctypes.string_at(out, n.value)
    libc.free(out)
    w, h, ch, img = png_decode(png)
    assert (w, h, ch) == (3, 2, 1)
    assert img.reshape(-1).tolist() == list(pix)
    for k in range(7):
        blob = bytes(range(k * 37 % 256, k * 37 % 256 + k))
        p = lib.pk_base64(blob, len(blob))
        assert ctypes.string_at(p).decode() == base64.b64encode(blob).decode()
        libc.free(p)


# ---------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def work():
    d = pathlib.Path(tempfile.mkdtemp(prefix="pk-report-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def demo(work):
    """`pathkernel demo --out DIR`, run from another directory (the data are
    found through the source tree)."""
    out = work / "demo"
    text = pk("demo", "--out", out, cwd=work)
    return out, text


@pytest.fixture(scope="module")
def report(demo, work):
    """A report of the demo run with a convergence figure (a small
    `convergence --out` run on 100 digits, queries from a 12-row CSV)."""
    out, _ = demo
    raw = load_digits()
    qcsv = work / "q.csv"
    np.savetxt(qcsv, raw[:12], delimiter=",", fmt="%.17g")
    conv = work / "conv"
    pk("convergence", "--data", DIGITS, "--first", 100, "--standardize", "--query", qcsv, "--model", "mlp:8:tanh",
       "--loss", "softmax", "--optim", "gd", "--time", 1, "--lrs", "0.2,0.1,0.05", "--rules", "left,mid,gl2",
       "--out", conv)
    html = work / "report.html"
    text = pk("report", out / "run", "--first", 24, "--convergence", conv, "--top", 4, "--out", html)
    assert "wrote" in text
    return html, html.read_text(encoding="utf-8"), conv


def load_digits():
    with gzip.open(DIGITS, "rt") as f:
        rows = [line for line in f if line.strip()]
    first = rows[0].split(",")[0]
    try:
        float(first)
    except ValueError:
        rows = rows[1:]
    return np.array([[float(v) for v in line.split(",")] for line in rows])


# ------------------------------------------------------------------- the demo

def test_demo_prints_error_table_and_writes_report(demo):
    out, text = demo
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^(left|mid|gl2|gl4)\s+(\S+)\s+(\S+)\s+(\S+)$", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    assert set(rows) == {"left", "mid", "gl2", "gl4"}, text
    assert rows["gl4"][0] < 1e-9, rows
    # the error shrinks with the order of the rule
    assert rows["left"][0] > rows["mid"][0] > rows["gl2"][0] > rows["gl4"][0]
    assert rows["left"][0] > 1e-3  # the paper's kernel is visibly off
    assert "proponents (5)" in text and "opponents (5)" in text
    assert (out / "run" / "run.json").is_file()
    contrib = np.load(out / "explain" / "contrib.npy")
    pred, bias = np.load(out / "explain" / "pred.npy"), np.load(out / "explain" / "bias.npy")
    assert contrib.shape == (10, 1797, 10)
    assert np.abs(pred - bias - contrib.sum(axis=1)).max() < 1e-9
    rep = out / "report.html"
    assert rep.is_file() and rep.stat().st_size > 10000
    html = rep.read_text(encoding="utf-8")
    for fid in ("fig-loss", "fig-representation", "fig-kernel", "fig-movement", "fig-query-0"):
        assert f'id="{fid}"' in html
    assert 'id="fig-convergence"' not in html  # no --convergence: no figure


def test_demo_runs_again_into_the_same_directory(demo, work):
    if SLOW:
        pytest.skip("a second demo under the sanitizers adds a minute and checks nothing the release build does not")
    out, first = demo
    again = pk("demo", "--out", out, "--threads", 1, cwd=work)  # results do not depend on threads
    strip = lambda t: [l for l in t.splitlines() if not re.search(r"\d+\.\d+ s|seconds|^\w+\s+\S+\s+\S+\s+\d+\.\d+$", l)]
    assert strip(first) == strip(again)


# ---------------------------------------------------------- (i) the HTML itself

EXPECTED = ["fig-loss", "fig-representation", "fig-convergence", "fig-kernel", "fig-movement",
            "fig-query-0", "fig-query-1", "fig-query-2"]


def figures(html):
    return dict(re.findall(r'<figure id="([^"]+)">(.*?)</figure>', html, re.S))


def test_html_is_self_contained(report):
    _, html, _ = report
    urls = re.findall(r"(?:https?|ftp)://[^\s\"'<>)]*", html)
    assert all(u == "http://www.w3.org/2000/svg" for u in urls), urls
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)
    assert not re.search(r"<link\b", html, re.I)
    assert "@import" not in html
    for ref in re.findall(r'(?:href|src)\s*=\s*"([^"]*)"', html):
        assert ref.startswith("data:image/png;base64,"), ref[:80]
    for u in re.findall(r"url\(([^)]*)\)", html):
        assert u.strip("'\"").startswith("data:"), u
    assert html.lstrip().startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


def test_every_figure_is_present_and_drawn(report):
    _, html, _ = report
    figs = figures(html)
    for fid in EXPECTED:
        assert fid in figs, f"{fid} missing"
        body = figs[fid]
        assert "<svg" in body and "</svg>" in body and "<figcaption>" in body, fid
        marks = len(re.findall(r"<(?:path|rect|circle|image)\b", body))
        assert marks >= 10, f"{fid}: only {marks} drawn elements"
        assert re.search(r"<text[^>]*>[^<]+", body), f"{fid}: no text (axis labels)"
    # (a) the loss: one point per step (300 steps)
    loss_paths = re.findall(r'<path fill="none"[^>]* d="([^"]+)"', figs["fig-loss"])
    assert max(p.count("L") for p in loss_paths) >= 299
    assert "step t" in figs["fig-loss"] and "loss" in figs["fig-loss"]
    # (b) one point per query and output (24 x 10) in each panel, and the errors printed
    assert figs["fig-representation"].count("<circle") >= 2 * 240
    assert re.search(r"max \|residual\| = [0-9.e+-]+\s+relative = [0-9.e+-]+", figs["fig-representation"])
    # (c) one line per rule, slopes in the legend, log axes (decade ticks)
    conv = figs["fig-convergence"]
    for rule in ("left", "mid", "gl2"):
        assert re.search(rf">{rule}: slope -?\d+\.\d\d<", conv), rule
    assert "10<tspan" in conv
    # (d) a heat map image and a colour bar
    assert 'id="kernel-heatmap"' in figs["fig-kernel"] and 'id="kernel-colorbar"' in figs["fig-kernel"]
    # (e) the movement at 11 steps, two panels
    assert figs["fig-movement"].count("<circle") >= 22
    # (f) 4 proponents + 4 opponents as bars with images
    for q in range(3):
        body = figs[f"fig-query-{q}"]
        assert body.count('class="bar"') == 8
        assert len(re.findall(r'data-kind="train"', body)) == 8
        assert len(re.findall(r'data-kind="query" data-index="%d"' % q, body)) == 1


def test_convergence_slopes_match_the_csv(report):
    _, html, conv = report
    slopes = {}
    for line in (conv / "convergence.csv").read_text().splitlines():
        f = line.split(",")
        if f[0] == "slope":
            slopes[f[2]] = float(f[3])
    for rule, s in slopes.items():
        assert f">{rule}: slope {s:.2f}<" in html


def test_png_data_uris_are_valid_and_show_the_examples(report):
    _, html, _ = report
    uris = re.findall(r'href="data:image/png;base64,([^"]+)"', html)
    assert len(uris) >= 3 * 9 + 2
    import base64
    for u in uris:
        png_decode(base64.b64decode(u, validate=True))
    raw = load_digits()
    X = raw[:, :-1]
    lo, hi = X.min(), X.max()
    expect = lambda row: 255 - np.floor(255 * (row - lo) / (hi - lo) + 0.5)
    n = 0
    for kind, idx, u in re.findall(r'<image class="example" data-kind="(\w+)" data-index="(\d+)"[^>]*href="'
                                   r'data:image/png;base64,([^"]+)"', html):
        w, h, ch, img = png_decode(base64.b64decode(u))
        assert (w, h, ch) == (8, 8, 1)
        row = X[int(idx)]  # queries are the first rows of the training data
        assert np.abs(img.reshape(-1).astype(float) - expect(row)).max() <= 1, (kind, idx)
        n += 1
    assert n == 3 * 9 + 12  # the three queries' figures, and the leave-one-out section's 12 training examples
    m = re.search(r'id="kernel-heatmap"[^>]*href="data:image/png;base64,([^"]+)"', html)
    w, h, ch, img = png_decode(base64.b64decode(m.group(1)))
    assert (w, h, ch) == (24, 60, 3)
    assert len({tuple(p) for p in img.reshape(-1, 3)}) > 50


def test_report_usage_errors(demo, work):
    out, _ = demo
    r = subprocess.run([str(PK), "report", out / "run"], capture_output=True, text=True)
    assert r.returncode == 2 and "--out" in r.stderr
    r = subprocess.run([str(PK), "report", out / "run", "--convergence", work / "nope", "--out", work / "x.html"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a directory" in r.stderr
    bad = work / "badconv"
    bad.mkdir(exist_ok=True)
    (bad / "convergence.csv").write_text("lr,steps,rule,max_abs_err,max_rel_err\n0.1,x,left,1,1\n")
    r = subprocess.run([str(PK), "report", out / "run", "--convergence", bad, "--out", work / "x.html"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "line 2" in r.stderr
    assert not (work / "x.html").exists()


# ------------------------------------------------------------ (ii) in a browser

def test_renders_in_headless_chromium(report, work):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (Debian package chromium; scripts/deps.sh installs it)")
    html, _, _ = report
    shot = work / "shot.png"
    profile = work / "chromium-profile"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,4000",
           html.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "HOME": str(work)})
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    w, h, ch, img = png_decode(shot.read_bytes())
    assert (w, h) == (1200, 4000)
    px = img[:, :, :3].reshape(-1, 3)
    colours = np.unique(px[:: 7], axis=0)
    assert len(colours) > 200, f"only {len(colours)} colours: a blank page?"
    nonwhite = (px < 250).any(axis=1).mean()
    assert 0.02 < nonwhite < 0.9, nonwhite


def test_non_image_data_get_bars_only(work):
    """Five features, one logistic output, weights stored every 7 steps: bars
    without images, the heat map over two classes, the movement at stored
    checkpoints only."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    csv = work / "bin.csv"
    np.savetxt(csv, np.c_[X, y], delimiter=",", fmt="%.17g")
    run = work / "bin-run"
    pk("train", "--data", csv, "--model", "mlp:8:tanh", "--loss", "logistic", "--optim", "sgd", "--batch", 16,
       "--lr", 0.2, "--steps", 40, "--keep", 7, "--out", run, "--quiet")
    html_path = work / "bin.html"
    pk("report", run, "--out", html_path, "--show", 2, "--top", 3)
    html = html_path.read_text(encoding="utf-8")
    figs = figures(html)
    assert set(figs) == {"fig-loss", "fig-representation", "fig-kernel", "fig-movement", "fig-query-0", "fig-query-1"}
    assert 'class="example"' not in html
    for q in range(2):
        assert 1 <= figs[f"fig-query-{q}"].count('class="bar"') <= 6
    # the steps of the movement: 0, 7, ..., 35 and 40 (stored checkpoints), at most 11 of them
    caption = re.search(r"at (\d+) recorded steps from 0 to 40", figs["fig-movement"])
    assert caption and int(caption.group(1)) == 7


# ------------------------------------------------- (iii) report --compare DIR

@pytest.fixture(scope="module")
def compare_report(work):
    """`pathkernel compare` on 300 digits (test: the first 200) with two widths,
    then `report` of its run with --compare."""
    cmp = work / "cmp"
    pk("compare", "--data", DIGITS, "--first", 300, "--test", DIGITS, "--test-first", 200, "--standardize",
       "--model", "mlp:32:relu", "--loss", "softmax", "--optim", "sgd", "--batch", 50, "--lr", 0.05, "--steps", 60,
       "--widths", "16,64", "--out", cmp)
    html_path = work / "compare.html"
    pk("report", cmp / "run", "--compare", cmp, "--show", 1, "--out", html_path)
    return cmp, html_path.read_text(encoding="utf-8")


def compare_blocks(cmp):
    text = (cmp / "compare.csv").read_text()
    first, _, second = text.partition("\n\n")
    machines = [line.split(",") for line in first.strip().splitlines()]
    widths = [line.split(",") for line in second.strip().splitlines()]
    return machines, widths


def test_compare_table_equals_the_csv(compare_report):
    cmp, html = compare_report
    machines, widths = compare_blocks(cmp)
    assert machines[0] == ["machine", "kernel", "test_accuracy", "seconds"]
    section = re.search(r'<section id="compare">(.*?)</section>', html, re.S).group(1)
    assert "Kernel machines side by side" in section
    table = re.search(r'<table id="compare-table">(.*?)</table>', section, re.S).group(1)
    assert re.search(r"<th>machine</th><th>kernel</th><th>test accuracy</th><th>seconds</th>", table)
    rows = re.findall(r'<tr data-machine="([^"]*)" data-kernel="([^"]*)"><td>[^<]+</td><td>[^<]+</td>'
                      r'<td class="num">([^<]+)</td><td class="num">([^<]+)</td></tr>', table)
    assert len(rows) == len(machines) - 1 == 7, rows
    for (m, k, v, s), row in zip(rows, machines[1:]):
        assert (m, k) == (row[0], row[1])
        if row[2] in ("", "nan", "-nan"):
            assert v == "n/a"
        else:
            assert float(v) == pytest.approx(float(row[2]), abs=5.1e-5)
        assert float(s) == pytest.approx(float(row[3]), abs=5.1e-3)


def test_compare_widths_figure(compare_report):
    cmp, html = compare_report
    _, widths = compare_blocks(cmp)
    assert widths[0] == ["width", "params", "test_accuracy", "kernel_change", "alignment_init", "alignment_final",
                         "seconds"]
    rows = widths[1:]
    assert [r[0] for r in rows] == ["16", "64"]
    body = figures(html)["fig-widths"]
    assert "<svg" in body and "<figcaption>" in body
    # one point per width for the kernel change, and for alignment before and after training
    assert body.count("<circle") == 3 * len(rows)
    lines = re.findall(r'<path fill="none"[^>]* d="([^"]*)"', body)
    assert len(lines) == 3 and all(p.count("M") == 1 and p.count("L") == len(rows) - 1 for p in lines), lines
    # the points lie where the CSV puts them: x on a log axis, widths increasing left to right
    pts = [tuple(map(float, xy)) for xy in re.findall(r'<circle cx="([0-9.]+)" cy="([0-9.]+)"', body)]
    assert pts[0][0] < pts[1][0]
    change = [float(r[3]) for r in rows]
    assert (pts[0][1] < pts[1][1]) == (change[0] > change[1])   # svg y grows downwards
    for label in ("hidden width", "|K_T - K_0|_F / |K_0|_F", "alignment", "before training (K_0)",
                  "after training (K_T)"):
        assert label in body, label
    for w in ("16", "64"):
        assert re.search(rf'font-size="11">{w}</text>', body), w   # a tick at each width


def test_compare_without_widths_has_table_only(compare_report, work):
    cmp, _ = compare_report
    machines, _ = compare_blocks(cmp)
    only = work / "cmp-nowidths"
    only.mkdir(exist_ok=True)
    (only / "compare.csv").write_text("\n".join(",".join(r) for r in machines) + "\n")
    out = work / "nowidths.html"
    pk("report", cmp / "run", "--compare", only, "--show", 0, "--out", out)
    html = out.read_text(encoding="utf-8")
    assert 'id="compare-table"' in html and 'id="fig-widths"' not in html


@pytest.mark.parametrize("text,line", [
    ("machine,kernel,accuracy,seconds\nnetwork,,0.9,0.1\n", 1),
    ("machine,kernel,test_accuracy,seconds\nnetwork,,0.9,0.1\nkrr,path,x,0.2\n", 3),
    ("machine,kernel,test_accuracy,seconds\nnetwork,,0.9\n", 2),
    ("machine,kernel,test_accuracy,seconds\nnetwork,,0.9,0.1\n\nwidth,params,test_accuracy,kernel_change,"
     "alignment_init,alignment_final,seconds\n16,1210,0.9,1.5,0.5,0.6,0.1\n64,4810,0.9,abc,0.5,0.6,0.1\n", 6),
    ("machine,kernel,test_accuracy,seconds\nnetwork,,0.9,0.1\n\nwidth,params,oops\n", 4),
])
def test_compare_malformed_csv(compare_report, work, text, line):
    cmp, _ = compare_report
    bad = work / "badcmp"
    bad.mkdir(exist_ok=True)
    (bad / "compare.csv").write_text(text)
    out = work / "badcmp.html"
    r = subprocess.run([str(PK), "report", cmp / "run", "--compare", bad, "--out", out], capture_output=True,
                       text=True)
    assert r.returncode == 2, r.stderr
    assert str(bad / "compare.csv") in r.stderr and f"line {line}" in r.stderr, r.stderr
    assert not out.exists()
    r = subprocess.run([str(PK), "report", cmp / "run", "--compare", work / "nope", "--out", out],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a directory" in r.stderr and not out.exists()


def test_report_help_mentions_compare():
    r = subprocess.run([str(PK), "report", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--compare DIR" in r.stdout
