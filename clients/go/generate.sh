#!/usr/bin/env bash
# Regenerates the Go stubs in clients/go/llamagridv1 from protos/. Run from anywhere; idempotent.
#
# protoc comes from Python's grpcio-tools (no system protoc needed); the two Go plugins are
# installed at pinned versions into <repo>/.tools/go/bin (gitignored).
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
MODULE=github.com/llamagrid/llamagrid/clients/go

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
bin="$root/.tools/go/bin"

install_plugin() { # name module version
  local exe="$bin/$1" stamp="$bin/.$1.version"
  if [[ -x "$exe" && "$(cat "$stamp" 2>/dev/null)" == "$3" ]]; then return; fi
  mkdir -p "$bin"
  GOBIN="$bin" "$go" install "$2@$3"
  echo "$3" >"$stamp"
}
install_plugin protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
install_plugin protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

cd "$root"
mapfile -t protos < <(find protos -name '*.proto' | sort)
"$python" -m grpc_tools.protoc -I protos \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
  --go_out="$here" --go_opt=module="$MODULE" \
  --go-grpc_out="$here" --go-grpc_opt=module="$MODULE" \
  "${protos[@]}"
