#!/usr/bin/env python3
"""Package the built filter as an OCI image without a Docker engine (standard library only).

Writes a standard OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`) that holds two
manifests of the same `.wasm`, both of which Istio's agent can fetch from a registry for `oci://` URLs:

  <tag>            the "compat" image: what `FROM scratch` + `COPY mcp_jwt_signer.wasm /plugin.wasm` would build.
                   One `application/vnd.oci.image.layer.v1.tar+gzip` layer holding exactly `plugin.wasm`, an OCI
                   image config, and the manifest annotation `module.wasm.image/variant: compat`. Any registry and
                   any image tool (skopeo, crane, podman, containerd) handles it. Use this one.
  <tag>-artifact   the Wasm OCI artifact variant: the raw module as an
                   `application/vnd.module.wasm.content.layer.v1+wasm` layer plus an
                   `application/vnd.module.wasm.config.v1+json` runtime-config layer (Istio wants exactly these two).
                   Needs a registry and a push tool that keep custom media types and uncompressed layers as they are.

The output is deterministic: fixed tar metadata (mtime = SOURCE_DATE_EPOCH or 0, uid/gid 0, mode 0644), a gzip
header without name or time, canonical JSON. The same `.wasm` (and the same zlib) always gives the same digests,
so a manifest digest printed here can be pinned in `oci://registry/repo@sha256:<digest>` or the EnvoyFilter's
`sha256` field (for `oci://` URLs Istio compares that field with the *manifest* digest).

Usage:
  python3 scripts/oci-image.py [--wasm PATH] [--out DIR] [--tag TAG] [--platform OS/ARCH]

Defaults: --wasm target/wasm32-wasip1/release/mcp_jwt_signer.wasm, --out target/oci/mcp-jwt-signer,
--tag the version in Cargo.toml. Push the compat image with e.g.
  skopeo copy oci:target/oci/mcp-jwt-signer:<tag> docker://<registry>/mcp-jwt-signer:<tag>
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import struct
import sys
import tarfile
import tempfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WASM = REPO / "target/wasm32-wasip1/release/mcp_jwt_signer.wasm"
DEFAULT_OUT = REPO / "target/oci/mcp-jwt-signer"
IMAGE_TITLE = "mcp-jwt-signer"
ROOT_ID = "mcp_jwt_signer"  # the root_id the filter is configured with (README, envoy.yaml, deploy/istio)

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
MT_WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_VARIANT = "module.wasm.image/variant"
WASM_MAGIC = b"\x00asm"
PLUGIN_FILE = "plugin.wasm"


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, annotations=None) -> dict:
    d = {"mediaType": media_type, "digest": "sha256:" + sha256_hex(data), "size": len(data)}
    if annotations:
        d["annotations"] = dict(annotations)
    return d


def deterministic_tar(name: str, content: bytes, mtime: int) -> bytes:
    """A ustar archive holding one regular file, with no host-dependent metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = 0o644
        info.mtime = mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def deterministic_gzip(data: bytes) -> bytes:
    """gzip (RFC 1952) with no file name, MTIME 0 and OS 255, so the bytes depend only on `data` (and zlib)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    body = compressor.compress(data) + compressor.flush()
    header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x02\xff"
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + body + trailer


def cargo_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    package = text.split("[package]", 1)[1].split("\n[", 1)[0]
    m = re.search(r'^version\s*=\s*"([^"]+)"', package, re.MULTILINE)
    if not m:
        raise SystemExit("no version in Cargo.toml [package]")
    return m.group(1)


def abi_versions(wasm: bytes) -> list:
    """proxy-wasm ABI versions the module exports (`proxy_abi_version_0_2_1`, ...), for the runtime config."""
    return sorted({m.decode() for m in re.findall(rb"proxy_abi_version_[0-9]+_[0-9]+_[0-9]+", wasm)})


def build_layout(wasm: bytes, tag: str, *, epoch: int, os_name: str, arch: str) -> dict:
    """Return {relative path: bytes} for the whole OCI image layout."""
    if not wasm.startswith(WASM_MAGIC):
        raise SystemExit("input is not a WebAssembly module (no \\0asm magic)")
    created = datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    blobs = {}

    def add_blob(data: bytes) -> None:
        blobs["blobs/sha256/" + sha256_hex(data)] = data

    common_annotations = {
        "org.opencontainers.image.title": IMAGE_TITLE,
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.created": created,
    }

    # --- compat variant: FROM scratch + plugin.wasm in one tar+gzip layer -------------------------------------
    layer_tar = deterministic_tar(PLUGIN_FILE, wasm, epoch)
    layer_gz = deterministic_gzip(layer_tar)
    image_config = canonical_json({
        "architecture": arch,
        "os": os_name,
        "created": created,
        "config": {"Labels": {"org.opencontainers.image.title": IMAGE_TITLE}},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256_hex(layer_tar)]},
        "history": [{"created": created, "created_by": f"COPY {PLUGIN_FILE} / # scripts/oci-image.py"}],
    })
    compat_manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": descriptor(MT_IMAGE_CONFIG, image_config),
        "layers": [descriptor(MT_LAYER_TAR_GZIP, layer_gz)],
        "annotations": {**common_annotations, ANNOTATION_VARIANT: "compat"},
    })
    for blob in (layer_gz, image_config, compat_manifest):
        add_blob(blob)

    # --- Wasm OCI artifact variant: raw module layer + runtime config layer -----------------------------------
    runtime_config = canonical_json({
        "type": "envoy_proxy",
        "abiVersions": abi_versions(wasm),
        "config": {"root_ids": [ROOT_ID]},
    })
    artifact_manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": descriptor(MT_WASM_CONFIG, runtime_config),
        "layers": [
            descriptor(MT_WASM_CONTENT, wasm, {"org.opencontainers.image.title": PLUGIN_FILE}),
            descriptor(MT_WASM_CONFIG, runtime_config, {"org.opencontainers.image.title": "runtime-config.json"}),
        ],
        "annotations": common_annotations,
    })
    for blob in (wasm, runtime_config, artifact_manifest):
        add_blob(blob)

    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [
            {**descriptor(MT_MANIFEST, compat_manifest, {ANNOTATION_REF_NAME: tag}),
             "platform": {"architecture": arch, "os": os_name}},
            descriptor(MT_MANIFEST, artifact_manifest, {ANNOTATION_REF_NAME: tag + "-artifact"}),
        ],
    })
    files = {"oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}), "index.json": index}
    files.update(blobs)
    return files


def write_layout(files: dict, out: Path) -> None:
    """Write into a fresh sibling directory, then swap it in: a reader never sees a half-written layout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        for rel, data in sorted(files.items()):
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o644)
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wasm", type=Path, default=DEFAULT_WASM, help="the built filter (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="OCI layout directory (default: %(default)s)")
    parser.add_argument("--tag", default=None, help="image tag (default: the version in Cargo.toml)")
    parser.add_argument("--platform", default="linux/amd64",
                        help="os/arch recorded in the compat image config, as `docker build` of FROM scratch "
                             "would on that builder; the module itself is platform-independent (default: %(default)s)")
    args = parser.parse_args(argv)

    if not args.wasm.is_file():
        print(f"oci-image: {args.wasm} not found: run `make build` first", file=sys.stderr)
        return 1
    tag = args.tag or cargo_version()
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", tag) or len(tag) > 119:
        print(f"oci-image: {tag!r} is not a valid image tag", file=sys.stderr)
        return 1
    os_name, _, arch = args.platform.partition("/")
    if not os_name or not arch:
        print("oci-image: --platform must look like os/arch", file=sys.stderr)
        return 1
    epoch_text = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not epoch_text.isdigit():
        print("oci-image: SOURCE_DATE_EPOCH must be a non-negative integer", file=sys.stderr)
        return 1

    files = build_layout(args.wasm.read_bytes(), tag, epoch=int(epoch_text), os_name=os_name, arch=arch)
    write_layout(files, args.out)

    index = json.loads(files["index.json"])
    print(f"OCI image layout: {args.out}")
    for m in index["manifests"]:
        print(f"  {IMAGE_TITLE}:{m['annotations'][ANNOTATION_REF_NAME]:<24} {m['digest']}")
    print(f"push:  skopeo copy oci:{args.out}:{tag} docker://<registry>/{IMAGE_TITLE}:{tag}")
    print(f"use:   oci://<registry>/{IMAGE_TITLE}@{index['manifests'][0]['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
