#!/bin/sh
# The README's first command: install what is missing, build, and run the
# main job on the embedded data set (UCI/sklearn 8x8 digits, data/digits.csv.gz):
# train a tanh MLP with sgd, then explain its predictions on a few queries
# exactly, as a sum over the 1,797 training examples.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
sh scripts/build.sh >/dev/null
PK=./build/pathkernel
RUN=demo-run
rm -rf "$RUN"
echo "== pathkernel train: mlp:64:tanh on data/digits.csv.gz (1,797 images, 64 pixels, 10 classes)"
$PK train --data data/digits.csv.gz --standardize --model mlp:64:tanh --loss softmax \
    --optim sgd --batch 64 --lr 0.1 --steps 300 --seed 1 --out "$RUN/run" --quiet
echo
echo "== pathkernel info"
$PK info "$RUN/run"
echo
echo "== pathkernel explain: 10 query images, every training example's exact contribution (gl4 quadrature)"
$PK explain "$RUN/run" --query data/digits.csv.gz --first 10 --quad gl4 --out "$RUN/explain"
echo
echo "== pathkernel verify: the paper's left rule against Gauss-Legendre, 100 queries"
$PK verify "$RUN/run" --query data/digits.csv.gz --first 100 --quad left --tol 1e-9 || true
$PK verify "$RUN/run" --query data/digits.csv.gz --first 100 --quad gl4 --tol 1e-9
echo
echo "outputs: $RUN/run (the recorded training path), $RUN/explain (pred, bias, contrib, kernel .npy, summary.json)"
