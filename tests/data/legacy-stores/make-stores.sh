#!/usr/bin/env bash
# How the stores in this folder were written: by `fedlora` built at commit 82b0910 (the last
# commit before the method modules), one short federation per method and mode, each packed as
# <name>.tar.xz without its base model and RocksDB's info logs:
#   tests/data/legacy-stores/make-stores.sh OLD_BUILD/ops/fedlora OUT
#   cd OUT && for s in */; do n=${s%/}; [ $n = _base ] && continue
#     tar --exclude="$n/base" --exclude=LOG --exclude='LOG.old*' --exclude=LOCK -cJf $n.tar.xz $n; done
# LegacyStores in tests/integration/replay_cli_test.cc replays every one with today's binary and
# requires every version bit for bit. Re-running this with a newer binary makes new stores, not
# legacy ones: keep these as they are.
set -euo pipefail
bin=$1; out=$2
mkdir -p "$out"
base="$out/_base"
[[ -f "$base/base/mlp.pt" ]] || "$bin" pretrain --arch mlp --epochs 2 --store "$base" >/dev/null
common="--arch mlp --workers 3 --speeds 1,1.5,2 --local-steps 3 --eval-every 0 --duration 120 --rank 4"
run() {
  case " $* " in *" --max-versions "*) ;; *) set -- "$@" --max-versions 3;; esac
  name=$1; shift
  rm -rf "$out/$name"; mkdir -p "$out/$name/base"; cp "$base/base/mlp.pt" "$out/$name/base/"
  echo "== $name: $*"
  "$bin" run $common --store "$out/$name" "$@" > "$out/$name.out" 2>&1 || { tail -5 "$out/$name.out"; return 1; }
  tail -3 "$out/$name.out"
}
run fedavg-adam-clientdp --method fedavg --buffer-size 3 --server-optimizer adam --client-dp-noise 0.5 --client-dp-clip 1
run ffa-fedasync-hinge --method ffa --mode fedasync --staleness hinge --max-versions 5
run fedsa-sync --method fedsa --mode sync
run flasc-decay --method flasc --buffer-size 3 --upload-densities 0.1,0.05,0.2 --density-decay 0.5 --decay-every 1 --download-density 0.5
run lora-a2 --method lora-a2 --buffer-size 3 --phase-length 1 --rank-budgets 1,2,1
run sa-fedlora-recdp --method sa-fedlora --buffer-size 3 --initiating-versions 1 --heating-until 1 --cooling-until 3 --min-budget 1 --dp-noise 1.0
run hetlora --method hetlora --buffer-size 3 --ranks 1,2,4
run flora-fedbuff --method flora --buffer-size 3 --ranks 1,2,4
run flora-fedasync --method flora --mode fedasync --ranks 2,4,4 --max-versions 5
run as-lora --method as-lora --buffer-size 3 --as-warmup 1
