#!/usr/bin/env bash
# Builds Skerry's registry-free container images as OCI image-layout tars, from Debian's
# busybox-static, with nothing but coreutils and tar:
#
#   skerry.local/busybox:1.35   a shell and the busybox applets (httpd, nc, wget, ...): the
#                               sample and test workloads
#   skerry.local/pause:1.35     the pod sandbox image: its default command sleeps forever
#                               (containerd's `sandbox_image`; with a shell default the sandbox
#                               would exit at once)
#
# Usage: deploy/images/build.sh [OUT_DIR]    (default: target/images)
#
# Each tar is an OCI image layout (oci-layout, index.json with io.containerd.image.name,
# blobs/sha256/...) that also carries a docker-style manifest.json, so the same file loads with
# `edgecore image import`, `ctr images import` and `docker load`. The layer is an uncompressed
# tar with fixed owners and mtimes, so a rebuild from the same busybox gives the same digests.
# Edges without a registry (air-gapped, a USB stick) load them with `edgecore image import`.
set -euo pipefail

out="${1:-target/images}"
busybox="${BUSYBOX:-/bin/busybox}"
# sed reads all of busybox's output (a `head` would leave it to die of SIGPIPE under pipefail).
version="$("$busybox" 2>&1 | sed -n '1s/^BusyBox v\([0-9.]*\).*/\1/p')"
if ! "$busybox" --list >/dev/null 2>&1; then
  echo "images: $busybox is not a busybox binary; install Debian's busybox-static (deploy/setup.sh does)" >&2
  exit 1
fi
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  armv7l) arch=arm ;;
  *) arch="$(uname -m)" ;;
esac
version="${version:-1.35}"
# The tag is major.minor of busybox: images built from the same Debian package share it.
tag="$(echo "$version" | cut -d. -f1,2)"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }

# The shared root filesystem layer.
root="$work/rootfs"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,var/www,proc,sys,dev,run}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ "$applet" = "bin/busybox" ] && continue
  mkdir -p "$root/$(dirname "$applet")"
  # Relative links keep the layer usable wherever it is unpacked.
  target="$(realpath -m -s --relative-to="/$(dirname "$applet")" /bin/busybox)"
  ln -sf "$target" "$root/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
layer="$work/layer.tar"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$root" -cf "$layer" .
layer_digest="$(sha "$layer")"
layer_size="$(stat -c %s "$layer")"

# build_image NAME CMD_JSON
build_image() {
  local name="$1" cmd="$2"
  local ref="skerry.local/$name:$tag"
  local dir="$work/$name"
  mkdir -p "$dir/blobs/sha256"
  cp "$layer" "$dir/blobs/sha256/$layer_digest"
  printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"skerry deploy/images/build.sh from busybox %s"}]}' \
    "$arch" "$cmd" "$layer_digest" "$version" >"$dir/config.json"
  local config_digest config_size
  config_digest="$(sha "$dir/config.json")"
  config_size="$(stat -c %s "$dir/config.json")"
  mv "$dir/config.json" "$dir/blobs/sha256/$config_digest"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$dir/manifest.oci"
  local manifest_digest manifest_size
  manifest_digest="$(sha "$dir/manifest.oci")"
  manifest_size="$(stat -c %s "$dir/manifest.oci")"
  mv "$dir/manifest.oci" "$dir/blobs/sha256/$manifest_digest"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "$manifest_size" "$arch" "$ref" "$tag" >"$dir/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  # docker load reads this instead of index.json.
  printf '[{"Config":"blobs/sha256/%s","RepoTags":["%s"],"Layers":["blobs/sha256/%s"]}]' \
    "$config_digest" "$ref" "$layer_digest" >"$dir/manifest.json"
  # Written aside and renamed: concurrent builds (parallel test binaries) never see half a tar.
  local partial
  partial="$(mktemp "$out/.$name.XXXXXX")"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir" \
    -cf "$partial" oci-layout index.json manifest.json blobs
  chmod 0644 "$partial"
  mv "$partial" "$out/$name.tar"
  echo "images: $out/$name.tar  $ref  sha256:$manifest_digest"
}

build_image busybox '["/bin/sh"]'
build_image pause '["/bin/sleep","infinity"]'
