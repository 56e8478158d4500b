# Sluice: Postgres → NATS JetStream → Redis change data capture.
#
#   make demo    see it work end to end on throwaway servers
#   make test    every test, end-to-end ones included (real Postgres, NATS, Redis)
#   make build   bin/sluice, bin/sluice-capture, bin/sluice-redis-writer

MODULES  := proto pkg services/capture services/redis-writer services/sluice e2e bench deploy
PKGS     := $(foreach m,$(MODULES),./$(m)/...)
BINARIES := ./services/sluice/cmd/sluice ./services/capture/cmd/sluice-capture ./services/redis-writer/cmd/sluice-redis-writer
FUZZTIME ?= 20s
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X github.com/sluicehq/sluice/pkg/buildinfo.version=$(VERSION) -X github.com/sluicehq/sluice/pkg/buildinfo.revision=$(REVISION)
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12

.PHONY: build demo test vet fuzz bench proto tidy clean

build:
	go build -ldflags '$(LDFLAGS)' -o bin/ $(BINARIES)

demo: build
	bin/sluice demo

test: vet
	go test -count=1 -timeout 20m $(PKGS)

vet:
	go vet $(PKGS)
	@unformatted=$$(gofmt -l $(MODULES)); if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

# Runs each fuzz test for FUZZTIME; the seed corpora run in `make test`.
fuzz:
	go test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./services/capture/internal/pgoutput
	go test -run '^$$' -fuzz '^FuzzAppend$$' -fuzztime $(FUZZTIME) ./services/capture/internal/pgvalue
	go test -run '^$$' -fuzz '^FuzzRecord$$' -fuzztime $(FUZZTIME) ./services/capture/internal/event
	go test -run '^$$' -fuzz '^FuzzAppendString$$' -fuzztime $(FUZZTIME) ./pkg/change
	go test -run '^$$' -fuzz '^FuzzExpand$$' -fuzztime $(FUZZTIME) ./pkg/config
	go test -run '^$$' -fuzz '^FuzzCheckWhere$$' -fuzztime $(FUZZTIME) ./pkg/backfill

# Benchmarks of the stages on real servers, then the whole pipeline (see
# BENCHMARKS.md; BENCH_FLAGS sizes it, e.g. BENCH_FLAGS='-changes 100000
# -duration 5s' for a quick run); never part of `make test`.
BENCH_FLAGS ?=
bench: build
	go test -run '^$$' -bench . -benchtime 200000x ./services/redis-writer/...
	go test -run '^$$' -bench . ./services/capture/internal/event
	go test -run '^$$' -bench '^BenchmarkCapture$$' -benchtime 500000x ./e2e
	go test -run '^$$' -bench '^BenchmarkCaptureBigTransaction$$' -benchtime 1000000x -timeout 30m ./e2e
	go test -run '^$$' -bench '^BenchmarkBackfill$$' -benchtime 200000x ./e2e
	go run ./bench -bin bin $(BENCH_FLAGS)

# Regenerates the wire contract's Go code, installing protoc and
# protoc-gen-go when they are missing.
proto:
	@command -v protoc >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler; \
		else echo "protoc is missing: apt-get install protobuf-compiler"; exit 1; fi; }
	GOBIN=$(CURDIR)/bin go install $(PROTOC_GEN_GO)
	PATH="$(CURDIR)/bin:$$PATH" protoc -Iproto --go_out=proto --go_opt=paths=source_relative proto/sluice/v1/*.proto

tidy:
	for m in $(MODULES); do (cd $$m && go mod tidy); done

clean:
	rm -rf bin
