"""Reading and writing field datasets: NetCDF4 (through h5netcdf) and zarr.

Writes are atomic: the data go to a temporary sibling path which is renamed onto the target
only once complete, so a crash or a bad input never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import xarray as xr

from pdediff.errors import DataError
from pdediff.io.conventions import SAMPLE_DIM

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NETCDF3_SIGNATURE = b"CDF"
WRITE_FORMATS = {".nc": "netcdf", ".nc4": "netcdf", ".h5": "netcdf", ".zarr": "zarr"}


def output_format(path: str | os.PathLike) -> str:
    """``"netcdf"`` or ``"zarr"`` from the suffix of ``path``; a clear error otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITE_FORMATS:
        raise DataError(
            f"cannot tell the output format of {str(path)!r}: use a path ending in "
            f"{', '.join(sorted(WRITE_FORMATS))}"
        )
    return WRITE_FORMATS[suffix]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    Refuses an existing ``path`` unless ``overwrite``.  On any exception the temporary
    output is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    if not path.parent.exists():
        raise DataError(f"output folder {path.parent} does not exist")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp = tmpdir / path.name
    try:
        yield tmp
        if path.exists():
            _remove(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def write_fields(ds: xr.Dataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``ds`` to NetCDF4 (``.nc``, h5netcdf engine) or zarr (``.zarr``, one sample per
    chunk), atomically.  Returns the path written."""
    fmt = output_format(path)
    with atomic_path(path, overwrite) as tmp:
        if fmt == "zarr":
            encoding = {
                v: {
                    "chunks": tuple(
                        1 if d == SAMPLE_DIM else n
                        for d, n in zip(ds[v].dims, ds[v].shape, strict=True)
                    )
                }
                for v in ds.data_vars
            }
            ds.to_zarr(tmp, mode="w", encoding=encoding, consolidated=False)
        else:
            ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=False)
    return Path(path)


def detect_format(path: str | os.PathLike) -> str:
    """``"zarr"``, ``"netcdf4"`` or ``"netcdf3"`` from the content of ``path``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.is_dir():
        if any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zattrs")):
            return "zarr"
        raise DataError(f"{path} is a directory but not a zarr store (no zarr.json or .zgroup)")
    with open(path, "rb") as f:
        head = f.read(2056)
    # HDF5 allows a user block of 512 * 2^k bytes before the signature (MATLAB v7.3 has one)
    if any(head[o : o + 8] == HDF5_SIGNATURE for o in (0, 512, 1024, 2048)):
        return "netcdf4"
    if head.startswith(NETCDF3_SIGNATURE):
        return "netcdf3"
    raise DataError(
        f"{path} is neither NetCDF (HDF5-based or classic) nor zarr (first bytes {head[:8]!r})"
    )


def open_fields(path: str | os.PathLike, load: bool = True) -> xr.Dataset:
    """Open a field dataset, detecting NetCDF4/HDF5, classic NetCDF and zarr by content.

    With ``load`` (default) the data are read into memory and the file is closed.
    """
    fmt = detect_format(path)
    try:
        if fmt == "zarr":
            # pdediff writes unconsolidated stores (consolidation is not in zarr v3's spec)
            consolidated = (Path(path) / ".zmetadata").exists()
            ds = xr.open_zarr(path, consolidated=consolidated)
        else:
            ds = xr.open_dataset(path, engine="h5netcdf" if fmt == "netcdf4" else "scipy")
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read {path} as {fmt}: {e}") from None
    if load:
        with ds:
            ds = ds.load()
    return ds
