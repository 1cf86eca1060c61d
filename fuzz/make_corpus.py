#!/usr/bin/python3
"""Write the seed corpus fuzz/corpus/<target>/: small valid and invalid
examples of each format. Rerun after changing it:
    /usr/bin/python3 fuzz/make_corpus.py
(the files are committed; this only documents how they were made)."""
import gzip
import io
import pathlib
import struct
import zlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"


def put(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def npy(arr, version=None):
    b = io.BytesIO()
    np.lib.format.write_array(b, np.ascontiguousarray(arr), version=version)
    return b.getvalue()


def gz(b):
    return gzip.compress(b, mtime=0)


# CSV
put("fuzz_data_csv", "header.csv", "a,b,label\n1,2,0\n3.5,-4e2,1\n")
put("fuzz_data_csv", "noheader.csv", "1,2,3\n4,5,6\n")
put("fuzz_data_csv", "crlf_blank.csv", "x;y\r\n\r\n1 , 2\r\n")
put("fuzz_data_csv", "ragged.csv", "1,2,3\n4,5\n")
put("fuzz_data_csv", "nan.csv", "1,nan,0\ninf,2,1\n0x10,1e999,2\n")
put("fuzz_data_csv", "empty.csv", "")
put("fuzz_data_csv", "quoted.csv", '"a","b"\n"1",2\n')
put("fuzz_data_csv", "text_labels.csv", 'y,a,b\nsetosa,5.1,3.5\n"I. ""v"", x",6,3\r\n1,2,3\n')
put("fuzz_data_csv", "semicolon_quoted.csv", 'a;"b;c";y\n1;2;"x\ny"\n3;4;z\n')
put("fuzz_data_csv", "tab_label_first.csv", "y\ta\tb\na\t1\t2\n1\t3\t4\n")
put("fuzz_data_csv", "unclosed_quote.csv", 'a,b,y\n1,2,"x\n')
# svmlight
put("fuzz_data_svm", "basic.svm", "1 1:0.5 3:2\n0 2:1\n")
put("fuzz_data_svm", "comment.svm", "# c\n-1 qid:3 1:1 2:2 # tail\n+1 4:1e3\n")
put("fuzz_data_svm", "unsorted.svm", "1 3:1 2:1\n")
put("fuzz_data_svm", "zero_idx.svm", "1 0:1\n")
put("fuzz_data_svm", "huge_idx.svm", "1 99999999999:1\n")
put("fuzz_data_svm", "nolabel.svm", " 1:2\n")
# npy
put("fuzz_npy", "f8_2x3.npy", npy(np.arange(6, dtype="<f8").reshape(2, 3)))
put("fuzz_npy", "f4_2.npy", npy(np.array([0, 1], dtype="<f4")))
put("fuzz_npy", "i8_2x1.npy", npy(np.array([[0], [1]], dtype="<i8")))
put("fuzz_npy", "i4_2.npy", npy(np.array([1, 0], dtype="<i4")))
put("fuzz_npy", "u1_2x2.npy", npy(np.array([[0, 255], [7, 9]], dtype="u1")))
put("fuzz_npy", "v2_f8.npy", npy(np.zeros((2, 3)), version=(2, 0)))
put("fuzz_npy", "v3_f8.npy", npy(np.zeros(2), version=(3, 0)))
put("fuzz_npy", "fortran.npy", npy(np.asfortranarray(np.zeros((2, 3)))))
put("fuzz_npy", "big_endian.npy", npy(np.zeros((2, 3), dtype=">f8")))
put("fuzz_npy", "truncated.npy", npy(np.zeros((2, 3)))[:-5])
put("fuzz_npy", "scalar.npy", npy(np.float64(3)))
put("fuzz_npy", "empty_shape.npy", npy(np.zeros((0, 3))))
# IDX: images (magic 0x803) and labels (0x801)
put("fuzz_data_idx", "images_2x2x2.idx", struct.pack(">IIII", 0x803, 2, 2, 2) + bytes([0, 64, 128, 255, 1, 2, 3, 4]))
put("fuzz_data_idx", "labels_2.idx", struct.pack(">II", 0x801, 2) + bytes([3, 7]))
put("fuzz_data_idx", "images.idx.gz", gz(struct.pack(">IIII", 0x803, 2, 2, 2) + bytes(8)))
put("fuzz_data_idx", "labels_short.idx", struct.pack(">II", 0x801, 5) + bytes([1]))
put("fuzz_data_idx", "bad_magic.idx", struct.pack(">II", 0x802, 2) + bytes(2))
# gzip
put("fuzz_gzip", "plain.txt", "hello\n")
put("fuzz_gzip", "hello.gz", gz(b"hello, world\n" * 10))
put("fuzz_gzip", "empty.gz", gz(b""))
put("fuzz_gzip", "two_members.gz", gz(b"ab") + gz(b"cd"))
put("fuzz_gzip", "truncated.gz", gz(b"x" * 200)[:-6])
put("fuzz_gzip", "trailing_junk.gz", gz(b"abc") + b"junk")
put("fuzz_gzip", "bomb.gz", gz(b"\0" * 100000))


# checkpoint / trajectory bodies (the fuzz targets append the crc32)
def ckpt(step, P, S, vals=None):
    body = b"PKWEIGHT" + struct.pack("<II", 1, 0) + struct.pack("<QQQ", step, P, S)
    n = P + S * P
    body += struct.pack(f"<{n}d", *(vals or [0.5] * n))
    return body


put("fuzz_ckpt", "valid_3_4_1.bin", ckpt(3, 4, 1))
put("fuzz_ckpt", "valid_0_2_0.bin", ckpt(0, 2, 0))
put("fuzz_ckpt", "short.bin", ckpt(3, 4, 1)[:30])
put("fuzz_ckpt", "bad_version.bin", b"PKWEIGHT" + struct.pack("<II", 2, 0) + bytes(24))
put("fuzz_ckpt", "with_crc.pkw", (lambda b: b + struct.pack("<I", zlib.crc32(b)))(ckpt(3, 4, 1)))


def traj(T, N, off, idx, lr=0.1):
    total = off[-1] if off else 0
    body = b"PKTRAJ\0\0" + struct.pack("<II", 1, 0) + struct.pack("<QQQ", T, N, total)
    body += struct.pack(f"<{T}d", *[lr] * T) + struct.pack(f"<{T}d", *[1.0] * T)
    body += struct.pack(f"<{T + 1}Q", *off) + struct.pack(f"<{len(idx)}I", *idx)
    return body


put("fuzz_traj", "valid.bin", traj(2, 3, [0, 1, 2], [0, 2]))
put("fuzz_traj", "fullbatch.bin", traj(2, 3, [0, 0, 0], []))
put("fuzz_traj", "zero_steps.bin", traj(0, 5, [0], []))
put("fuzz_traj", "bad_offsets.bin", traj(2, 3, [0, 2, 1], [0, 1]))
put("fuzz_traj", "bad_index.bin", traj(1, 3, [0, 1], [9]))
put("fuzz_traj", "with_crc.bin", (lambda b: b + struct.pack("<I", zlib.crc32(b)))(traj(1, 2, [0, 1], [1])))

# run.json (and trajectory bodies, which the run_json target also reads)
RUN = open(pathlib.Path(__file__).resolve().parent / "fuzz_run_json.c").read()
start = RUN.index('"{\\"format')
end = RUN.index(";", start)
js = "".join(part for part in RUN[start:end].split('"\n    "'))
js = js.strip().strip('"').replace('\\"', '"')
put("fuzz_run_json", "run.json", js)
put("fuzz_run_json", "run_nostd.json", js.replace('"standardize":true', '"standardize":false'))
put("fuzz_run_json", "run_ntk_adam.json", js.replace('"standard"', '"ntk"').replace('"sgd"', '"adam"'))
put("fuzz_run_json", "run_recorded.json", js.replace('"seed":', '"recorded":{"from":"PyTorch 1.13.1","dtype":"float32",'
                                                     '"step_tolerance":0.001},"seed":'))
put("fuzz_run_json", "not_json.json", "{\"format\": ")
put("fuzz_run_json", "wrong_format.json", '{"format":"other","version":1}')
put("fuzz_run_json", "traj.bin", traj(2, 3, [0, 1, 2], [0, 2]))
# spec strings
for i, s in enumerate(["mlp:64,64:tanh", "mlp::", "linear", "mlp:3:relu", "mlp:1,2,3,4:gelu",
                       "mse", "softmax", "logistic", "sgd", "adamw", "momentum", "cosine", "step",
                       "left", "mid", "gl4", "gl8", "ntk", "mlp:0:tanh", "mlp:99999999999999999999:tanh"]):
    put("fuzz_spec", f"s{i:02d}", s)
# residual blocks and dropout (MATH.md section 9)
for i, s in enumerate(["dense:4;tanh;res(dense:4;tanh;dense:4);dense", "dense:4;res(dense:2;proj);dense",
                       "res(res(dense:3));dense", "dense:4;dropout:0.5;dense", "dense:4;res(;dense",
                       "res()", "dropout:1e-300;dense", "res(tanh;dropout:0.9;dense:2;proj);dense"]):
    put("fuzz_spec", f"r{i:02d}", s)
# numbers
for i, s in enumerate(["0", "1.5", "-2e-3", "1e308", "1e309", "nan", "inf", "0x1p3", " 7", "7 ",
                       "18446744073709551615", "18446744073709551616", "-1", "", "12abc"]):
    put("fuzz_number", f"n{i:02d}", s)
