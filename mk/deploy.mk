# Deployment targets (deploy/, docs/deploy.md). Included by the top-level Makefile.
#
#   make images          build the webhook, memkind and example redis images (needs a Docker daemon)
#   make image-contexts  only compile the binaries into the images' build contexts (no Docker)
#   make helm-template   print the Helm chart rendering (in-process, no helm binary)
#   make kustomize-build print deploy/default's rendering (in-process, no kustomize binary)
#   make deploy-test     the manifest tests (go test ./deploy/...)

GO ?= go
BIN ?= $(CURDIR)/bin
DOCKER ?= docker

IMAGE_REGISTRY ?= pmem-webhook
IMAGE_TAG ?= dev
WEBHOOK_IMAGE ?= $(IMAGE_REGISTRY)/webhook:$(IMAGE_TAG)
MEMKIND_IMAGE ?= $(IMAGE_REGISTRY)/memkind:$(IMAGE_TAG)
# The example application image (deploy/examples/redis-*.yaml): Debian's redis-server.
REDIS_IMAGE ?= $(IMAGE_REGISTRY)/redis-debian:7.0

# One build context per image: only the binaries its Dockerfile copies (deploy/deploy_test.go
# checks the two lists against the Dockerfiles' COPY instructions).
IMAGE_CONTEXTS := $(BIN)/images
IMAGE_BINARIES_webhook := pmem-webhook
IMAGE_BINARIES_memkind := pmem-memkind-init pmem-stage

# Static linux/amd64 binaries: the images are FROM distroless/static and debian, and persistent
# memory exists only on x86-64.
IMAGE_GOENV := CGO_ENABLED=0 GOOS=linux GOARCH=amd64
IMAGE_GOFLAGS := -trimpath -ldflags=-s\ -w

.PHONY: images image-contexts image-webhook image-memkind image-redis-debian helm-template kustomize-build deploy-test

## images: build the webhook, memkind and redis-debian images (needs a Docker daemon; IMAGE_REGISTRY, IMAGE_TAG)
images: image-webhook image-memkind image-redis-debian

## image-contexts: compile the static binaries the images copy into bin/images/<image>/ (no Docker)
image-contexts:
	@mkdir -p $(IMAGE_CONTEXTS)/webhook $(IMAGE_CONTEXTS)/memkind $(IMAGE_CONTEXTS)/redis-debian
	$(foreach b,$(IMAGE_BINARIES_webhook),$(IMAGE_GOENV) $(GO) build $(IMAGE_GOFLAGS) -o $(IMAGE_CONTEXTS)/webhook/$(b) ./cmd/$(b) &&) true
	$(foreach b,$(IMAGE_BINARIES_memkind),$(IMAGE_GOENV) $(GO) build $(IMAGE_GOFLAGS) -o $(IMAGE_CONTEXTS)/memkind/$(b) ./cmd/$(b) &&) true

image-webhook: image-contexts
	$(DOCKER) build --platform linux/amd64 -f deploy/images/webhook/Dockerfile -t $(WEBHOOK_IMAGE) $(IMAGE_CONTEXTS)/webhook

image-memkind: image-contexts
	$(DOCKER) build --platform linux/amd64 -f deploy/images/memkind/Dockerfile -t $(MEMKIND_IMAGE) $(IMAGE_CONTEXTS)/memkind

# Copies nothing from its context: everything comes from Debian's packages.
image-redis-debian: image-contexts
	$(DOCKER) build --platform linux/amd64 -f deploy/images/redis-debian/Dockerfile -t $(REDIS_IMAGE) $(IMAGE_CONTEXTS)/redis-debian

## helm-template: render the Helm chart in-process (HELM_VALUES=file for your values)
helm-template:
	@$(GO) run ./deploy/render helm $(if $(HELM_VALUES),-f $(HELM_VALUES))

## kustomize-build: render deploy/default in-process (what kubectl apply -k deploy/default applies)
kustomize-build:
	@$(GO) run ./deploy/render kustomize

## deploy-test: the manifest, chart and Dockerfile tests (go test ./deploy/...)
deploy-test:
	$(GO) test ./deploy/...
