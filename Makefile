# Sluice: Postgres → NATS JetStream → Redis change data capture.
#
#   make demo    see it work end to end on throwaway servers
#   make test    every test, end-to-end ones included (real Postgres, NATS, Redis)
#   make build   bin/sluice, bin/sluice-capture, bin/sluice-redis-writer
#   make release static binaries for linux/amd64 and linux/arm64 in dist/
#   make images  container images of the three binaries
#   make test-deploy  builds the release binaries and images, and checks them

MODULES  := proto pkg services/capture services/redis-writer services/sluice e2e bench deploy
PKGS     := $(foreach m,$(MODULES),./$(m)/...)
# The services' and libraries' own tests run under the race detector; the
# end-to-end ones drive built binaries, and run as they are.
UNIT     := $(foreach m,proto pkg services/capture services/redis-writer services/sluice,./$(m)/...)
SLOW     := $(foreach m,e2e bench deploy,./$(m)/...)
BINARIES := ./services/sluice/cmd/sluice ./services/capture/cmd/sluice-capture ./services/redis-writer/cmd/sluice-redis-writer
FUZZTIME ?= 20s
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X github.com/sluicehq/sluice/pkg/buildinfo.version=$(VERSION) -X github.com/sluicehq/sluice/pkg/buildinfo.revision=$(REVISION)
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12

.PHONY: build demo test test-deploy vet fuzz bench proto tidy clean

build:
	go build -ldflags '$(LDFLAGS)' -o bin/ $(BINARIES)

demo: build
	bin/sluice demo

test: vet
	go test -count=1 -race -timeout 20m $(UNIT)
	go test -count=1 -timeout 20m $(SLOW)

# The slow deployment checks: release binaries and images, built and
# inspected (needs podman, buildah or docker; root to chroot into them).
test-deploy:
	go test -count=1 -timeout 30m -tags images -run 'Image' -v ./deploy/

vet:
	go vet $(PKGS)
	go vet -tags images ./deploy/...
	@unformatted=$$(gofmt -l $(MODULES)); if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi

# Runs each fuzz test for FUZZTIME; the seed corpora run in `make test`.
fuzz:
	go test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./services/capture/internal/pgoutput
	go test -run '^$$' -fuzz '^FuzzAppend$$' -fuzztime $(FUZZTIME) ./services/capture/internal/pgvalue
	go test -run '^$$' -fuzz '^FuzzValidJSON$$' -fuzztime $(FUZZTIME) ./services/capture/internal/pgvalue
	go test -run '^$$' -fuzz '^FuzzRecord$$' -fuzztime $(FUZZTIME) ./services/capture/internal/event
	go test -run '^$$' -fuzz '^FuzzAppendString$$' -fuzztime $(FUZZTIME) ./pkg/change
	go test -run '^$$' -fuzz '^FuzzEvents$$' -fuzztime $(FUZZTIME) ./pkg/change
	go test -run '^$$' -fuzz '^FuzzAppendTimestamp$$' -fuzztime $(FUZZTIME) ./pkg/change
	go test -run '^$$' -fuzz '^FuzzExpand$$' -fuzztime $(FUZZTIME) ./pkg/config
	go test -run '^$$' -fuzz '^FuzzCheckWhere$$' -fuzztime $(FUZZTIME) ./pkg/backfill
	go test -run '^$$' -fuzz '^FuzzMessageVersion$$' -fuzztime $(FUZZTIME) ./services/redis-writer/internal/store

# Benchmarks of the stages on real servers, then the whole pipeline (see
# BENCHMARKS.md; BENCH_FLAGS sizes it, e.g. BENCH_FLAGS='-changes 100000
# -duration 5s' for a quick run); never part of `make test`.
BENCH_FLAGS ?=
bench: build
	go test -run '^$$' -bench . -benchtime 200000x ./services/redis-writer/...
	go test -run '^$$' -bench . ./services/capture/internal/event
	go test -run '^$$' -bench . -benchtime 300000x ./services/capture/internal/publisher
	go test -run '^$$' -bench '^BenchmarkCapture$$' -benchtime 500000x ./e2e
	go test -run '^$$' -bench '^BenchmarkCaptureBigTransaction$$' -benchtime 1000000x -timeout 30m ./e2e
	go test -run '^$$' -bench '^BenchmarkBackfill$$' -benchtime 200000x ./e2e
	go test -run '^$$' -bench '^BenchmarkDev$$' -benchtime 300000x -timeout 30m ./e2e
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

# Release binaries: static (no cgo) and reproducible (-trimpath: the same
# sources, Go, VERSION and REVISION give the same bytes), one directory per
# platform: dist/linux_amd64/, dist/linux_arm64/. -s -w drop the symbol table
# and DWARF, a third of the size; panics and profiles keep their function
# names and lines, which Go keeps in its own tables.
DIST      ?= dist
PLATFORMS ?= linux/amd64 linux/arm64

.PHONY: release images

release:
	@set -e; for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; \
		echo "$(DIST)/$${os}_$$arch/"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch go build -trimpath -buildvcs=false -ldflags '-s -w $(LDFLAGS)' -o $(DIST)/$${os}_$$arch/ $(BINARIES); \
	done

# Images of the three binaries (deploy/Containerfile), tagged
# $(IMAGE_PREFIX)<binary>:$(VERSION) and :latest, for IMAGE_PLATFORM (the
# Go toolchain's architecture unless told; any other needs no emulation, as
# the build runs nothing), built with podman, else buildah, else docker
# (CONTAINER_TOOL picks one). CONTAINER_TOOL_FLAGS go before the tool's
# command, e.g. '--storage-driver vfs' where overlay mounts are refused. Set
# IMAGE_PREFIX to a registry, e.g. ghcr.io/sluicehq/, to push them.
IMAGE_PLATFORM ?= linux/$(shell go env GOARCH)
IMAGE_PREFIX   ?=
IMAGE_SOURCE   ?= https://github.com/sluicehq/sluice
# The first CA bundle found: Debian and Ubuntu, Fedora and RHEL, Alpine.
CA_CERTS       ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem))
CONTAINER_TOOL ?= $(firstword $(foreach t,podman buildah docker,$(if $(shell command -v $(t) 2>/dev/null),$(t))))
CONTAINER_TOOL_FLAGS ?=
# podman and buildah date the image and its files at the last commit, so
# that the same binaries and CA bundle give the same image ID; docker has no
# such flag.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
IMAGE_BUILD_FLAGS ?= $(if $(filter docker,$(notdir $(CONTAINER_TOOL))),,--timestamp $(SOURCE_DATE_EPOCH))

images:
	@test -n "$(CONTAINER_TOOL)" || { echo "images: podman, buildah or docker is needed"; exit 1; }
	@test -f "$(CA_CERTS)" || { echo "images: no CA bundle; set CA_CERTS or install ca-certificates"; exit 1; }
	@$(MAKE) --no-print-directory release PLATFORMS='$(IMAGE_PLATFORM)' DIST='$(DIST)' VERSION='$(VERSION)' REVISION='$(REVISION)'
	rm -rf $(DIST)/image && mkdir -p $(DIST)/image
	cp $(DIST)/$(subst /,_,$(IMAGE_PLATFORM))/* deploy/image/passwd deploy/image/group $(DIST)/image/
	cp -L $(CA_CERTS) $(DIST)/image/ca-certificates.crt
	@set -e; for b in sluice-capture sluice-redis-writer sluice; do \
		echo "$(IMAGE_PREFIX)$$b:$(VERSION)"; \
		$(CONTAINER_TOOL) $(CONTAINER_TOOL_FLAGS) build $(IMAGE_BUILD_FLAGS) --platform $(IMAGE_PLATFORM) \
			-f deploy/Containerfile --target $$b \
			--build-arg VERSION='$(VERSION)' --build-arg REVISION='$(REVISION)' --build-arg SOURCE='$(IMAGE_SOURCE)' \
			-t $(IMAGE_PREFIX)$$b:$(VERSION) -t $(IMAGE_PREFIX)$$b:latest $(DIST)/image; \
	done
