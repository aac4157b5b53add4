#!/usr/bin/env bash
# Installs the Debian bookworm packages fedlora builds, runs and tests with. Idempotent: when
# everything is present it only checks, in well under a second. Needs root (or sudo) to install.
# Arguments name extra packages a particular command needs (ops/fuzz: clang and libFuzzer).
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libzmq3-dev cppzmq-dev libsodium-dev
  libflatbuffers-dev flatbuffers-compiler
  libtorch-dev
  librocksdb-dev
  libspdlog-dev libfmt-dev
  libcli11-dev nlohmann-json3-dev zlib1g-dev
  libcpp-httplib-dev  # the HTTP endpoint and client (ops/observe)
  libmosquitto-dev libhiredis-dev  # the peer benchmarks' clients (ops/bench/peers.cc)
  libgtest-dev libgmock-dev libbenchmark-dev
  libsentencepiece-dev  # the language models' tokenizer.model
  dataset-fashion-mnist
  fortunes  # the lm and lm-finetune tasks' text (/usr/share/games/fortunes, BSD licence)
  wordnet-base  # the text-classify task's glosses (/usr/share/wordnet, WordNet licence)
  dict-gcide  # fedlora's own language model learns from it (/usr/share/dictd, GPL-2+; apt adds the dictd server it depends on)
  python3 xz-utils  # xz: the legacy-store fixtures of the replay test
  # The independent reference the language-model tests compare with (tests/lm/reference).
  python3-torch python3-sentencepiece python3-numpy
)
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "installing ${#missing[@]} Debian packages: ${missing[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/fedlora-apt.log 2>&1 || {
  tail -n 30 /tmp/fedlora-apt.log >&2
  echo "install-deps: apt-get install failed (full log: /tmp/fedlora-apt.log)" >&2
  exit 1
}
echo "installed: ${missing[*]}"
