"""Checks that SimpleITK does not make: raw image headers, and a pair of images before a run.

SimpleITK 2.5 reads several broken files without a word (measured, ``docs/reliability.md``):
an uncompressed ``.nii``, an Analyze ``.hdr/.img`` pair or a binary ``.vtk`` cut short is
read with the missing voxels left as zeros or garbage; NaN/infinite voxels of a NIfTI file
become zeros; a NIfTI ``pixdim`` of 0, NaN or infinity becomes a spacing of 1 mm; a negative
``pixdim`` (or NRRD/MetaImage spacing) silently flips the axis; a sheared NIfTI ``sform`` is
silently replaced by a rotation. :func:`check_nifti` and :func:`check_file_header` read the
header (and, for NIfTI, scan the voxel bytes) themselves before SimpleITK reads the file, and
refuse such files. :func:`check_run` checks a fixed/moving pair and the memory a run needs.
"""
from __future__ import annotations

import gzip
import logging
import math
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..preprocess.grid_rules import MIN_WORKING_VOXELS  # shared with the Slicer module's pre-flight check

__all__ = ["check_nifti", "check_file_header", "gzip_length", "pixel_bytes", "physical_bounds", "check_overlap",
           "check_grid", "check_run", "MIN_WORKING_VOXELS", "MAX_SPACING_MM", "MAX_ORIGIN_MM"]

log = logging.getLogger("SHMoAReg")

_NRRD_TYPES = {"char": 1, "signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1,
               "uint8_t": 1, "short": 2, "short int": 2, "signed short": 2, "int16": 2, "int16_t": 2,
               "ushort": 2, "unsigned short": 2, "uint16": 2, "uint16_t": 2, "int": 4, "signed int": 4, "int32": 4,
               "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4, "uint32_t": 4, "longlong": 8,
               "long long": 8, "int64": 8, "int64_t": 8, "ulonglong": 8, "unsigned long long": 8, "uint64": 8,
               "uint64_t": 8, "float": 4, "double": 8}
_META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}


def pixel_bytes(pixel_id: int) -> int:
    """Bytes of one component of a SimpleITK pixel type (a complex value counts as two)."""
    text = sitk.GetPixelIDValueAsString(pixel_id)
    bits = re.search(r"(\d+)-bit", text)
    return (int(bits.group(1)) // 8 if bits else 8) * (2 if "complex" in text else 1)


# Larger spacings are no image of a body, and SimpleITK 2.5 hangs on some (ElementSpacing = 1e308).
MAX_SPACING_MM = 1e5
MAX_ORIGIN_MM = 1e9  # 1000 km: beyond, the arithmetic of physical points loses all precision


def _positive(values: Sequence[float]) -> bool:
    return all(np.isfinite(v) and v > 0 for v in values)


def _check_spacing(path: Path, where: str, values: Sequence[float]) -> None:
    """Refuse spacings that are not positive numbers of mm up to :data:`MAX_SPACING_MM` (``where``: the field)."""
    values = tuple(float(v) for v in values)
    if not _positive(values):
        raise InputError(f"{path}: {where} {values}; every spacing must be a positive number of mm")
    if max(values) > MAX_SPACING_MM:
        raise InputError(f"{path}: {where} {values}; spacings above {MAX_SPACING_MM:g} mm are not supported")


def _truncated(path: Path, what: str, need: int, have: int) -> InputError:
    return InputError(f"{path}: the file is truncated: the header describes {need} bytes of {what} "
                      f"but the file holds {have}")


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_stream(path: Path, consume: Callable[[bytes], None]) -> int:
    """Feed the (decompressed) content of ``path`` to ``consume`` block by block; returns its length."""
    import zlib

    length = 0
    try:
        with _open(path) as stream:
            while block := stream.read(1 << 24):
                consume(block)
                length += len(block)
    except EOFError:
        raise InputError(f"{path}: the compressed file is truncated (the gzip stream ends early)") from None
    except (PermissionError, FileNotFoundError, IsADirectoryError) as error:
        raise InputError(f"{path}: cannot read the file ({error.strerror})") from None
    except (OSError, zlib.error) as error:
        raise InputError(f"{path}: the compressed file is corrupt ({error})") from None
    return length


def gzip_length(path: Path) -> int:
    """Decompress ``path`` to its end (checking the CRC) and return the length, or raise :class:`InputError`."""
    return _read_stream(path, lambda block: None)


# NIfTI datatype codes (nifti1.h); those of real floating-point voxels -> numpy type
_NIFTI_TYPES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304)
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_header(head: bytes) -> dict | None:
    """The fields of a NIfTI-1/2 or Analyze header that matter here, or None if ``head`` is not one."""
    if len(head) >= 540 and head[4:7] in (b"n+2", b"ni2"):
        order = "<" if struct.unpack("<i", head[:4])[0] == 540 else ">"
        return {"order": order, "dims": struct.unpack(order + "8q", head[16:80]),
                "datatype": struct.unpack(order + "h", head[12:14])[0],
                "bitpix": struct.unpack(order + "h", head[14:16])[0],
                "pixdim": struct.unpack(order + "8d", head[104:168]),
                "offset": struct.unpack(order + "q", head[168:176])[0],
                "qform_code": struct.unpack(order + "i", head[344:348])[0],
                "quatern": struct.unpack(order + "6d", head[352:400]),
                "sform_code": struct.unpack(order + "i", head[348:352])[0],
                "srow": np.array(struct.unpack(order + "12d", head[400:496])).reshape(3, 4)}
    if len(head) < 348:
        return None
    magic = head[344:347] in (b"n+1", b"ni1")
    for order in "<>":
        rank = struct.unpack(order + "h", head[40:42])[0]
        if (magic or struct.unpack(order + "i", head[:4])[0] == 348) and 1 <= rank <= 7:
            return {"order": order, "dims": struct.unpack(order + "8h", head[40:56]),
                    "datatype": struct.unpack(order + "h", head[70:72])[0],
                    "bitpix": struct.unpack(order + "h", head[72:74])[0],
                    "pixdim": struct.unpack(order + "8f", head[76:108]),
                    "offset": struct.unpack(order + "f", head[108:112])[0] if magic else 0.0,
                    "qform_code": struct.unpack(order + "h", head[252:254])[0] if magic else 0,
                    "quatern": struct.unpack(order + "6f", head[256:280]),
                    "sform_code": struct.unpack(order + "h", head[254:256])[0] if magic else 0,
                    "srow": np.array(struct.unpack(order + "12f", head[280:328])).reshape(3, 4)}
    return None


def check_nifti(path: Path, name: str) -> None:
    """NIfTI-1/2 and Analyze (``.nii``, ``.nii.gz``, ``.hdr`` + ``.img``): what SimpleITK reads silently.

    Refuses a non-positive/NaN pixdim, a degenerate or sheared sform, voxel data shorter than the
    header says, and NaN/infinite voxels (SimpleITK's NIfTI reader turns them into zeros).
    ``name`` prefixes the NaN message like :func:`SHMoAReg.io.image_io.check_image` does.
    """
    lower = path.name.lower()
    pair = lower.endswith((".hdr", ".hdr.gz"))
    stem = path.name[: -len(".hdr.gz") if lower.endswith(".gz") else -len(".hdr")]
    data_path = path.with_name(stem + ".img") if pair else path
    with _open(path) as stream:
        try:
            head = stream.read(540)
        except (EOFError, OSError):
            head = b""  # reported with the reason by _read_stream below
    header = _nifti_header(head)
    if header is None:
        if lower.endswith(".gz"):
            gzip_length(path)  # a truncated .nii.gz: say so rather than "not an image"
        return
    dims, bitpix, rank, datatype = header["dims"], header["bitpix"], header["dims"][0], header["datatype"]
    if datatype not in _NIFTI_TYPES:
        raise InputError(f"{path}: the NIfTI header gives an unknown datatype code {datatype}")
    if datatype in (32, 1792, 2048):
        raise InputError(f"{name}: complex voxels (NIfTI datatype {datatype}) are not supported; give a "
                         f"real-valued (e.g. magnitude) image")
    if any(d < 1 for d in dims[1:rank + 1]) or bitpix <= 0 or bitpix % 8:
        return  # an impossible header: SimpleITK refuses it with its own reason
    if not (np.isfinite(header["offset"]) and 0 <= header["offset"] < 2**62):
        raise InputError(f"{path}: the NIfTI header gives an invalid voxel data offset (vox_offset "
                         f"{header['offset']})")
    spatial = header["pixdim"][1:min(rank, 3) + 1]
    _check_spacing(path, "the NIfTI header gives the voxel size (pixdim)", spatial)
    _check_nifti_transforms(path, header)
    if header["sform_code"] > 0 and rank >= 3:
        matrix = header["srow"][:, :3]
        norms = np.linalg.norm(matrix, axis=0)
        if np.any(norms <= 0):
            raise InputError(f"{path}: the NIfTI sform matrix is degenerate "
                             f"({_rounded(matrix.ravel())})")
        unit = matrix / norms
        if not np.allclose(unit.T @ unit, np.eye(3), atol=1e-4):
            raise InputError(f"{path}: the NIfTI sform matrix is not orthogonal (sheared voxel axes, e.g. a gantry "
                             f"tilt); SimpleITK would silently replace it by a rotation. Resample the image onto an "
                             f"orthogonal grid first")
    if pair and not data_path.is_file():
        data_path = data_path.with_name(data_path.name + ".gz")
        if not data_path.is_file():
            return  # SimpleITK reports the missing data file
    offset = max(int(header["offset"]), 0) if not pair or header["offset"] > 0 else 0
    voxels = int(np.prod(dims[1:rank + 1], dtype=np.float64))
    need = offset + voxels * bitpix // 8
    kind = _NIFTI_FLOATS.get(header["datatype"])
    scan = _NonFinite(offset, np.dtype(header["order"] + kind) if kind else None, need)
    length = _read_stream(data_path, scan)
    if length < need:
        raise _truncated(data_path, "header and voxel data", need, length)
    if scan.count:
        raise InputError(f"{name}: {scan.count} voxel{'s are' if scan.count != 1 else ' is'} NaN or infinite")


def _check_nifti_transforms(path: Path, header: dict) -> None:
    """The qform/sform numbers SimpleITK uses must be finite (it hangs on an infinite sform offset)."""
    quatern = np.array(header["quatern"])
    if header["qform_code"] > 0 and (not np.all(np.isfinite(quatern)) or np.sum(quatern[:3] ** 2) > 1 + 1e-4
                                     or np.any(np.abs(quatern[3:]) > MAX_ORIGIN_MM)):
        raise InputError(f"{path}: the NIfTI qform is invalid (quatern_b/c/d, qoffset_x/y/z = {_rounded(quatern)})")
    if header["sform_code"] > 0 and (not np.all(np.isfinite(header["srow"]))
                                     or np.any(np.abs(header["srow"][:, 3]) > MAX_ORIGIN_MM)):
        raise InputError(f"{path}: the NIfTI sform matrix is invalid ({_rounded(header['srow'].ravel())})")


class _NonFinite:
    """Counts NaN/infinite values of ``dtype`` in bytes ``[offset, end)`` of a stream fed block by block."""

    def __init__(self, offset: int, dtype: np.dtype | None, end: int) -> None:
        self.offset, self.dtype, self.end = offset, dtype, end
        self.position, self.count, self.rest = 0, 0, b""

    def __call__(self, block: bytes) -> None:
        start, stop = self.position, self.position + len(block)
        self.position = stop
        if self.dtype is None or stop <= self.offset or start >= self.end:
            return
        data = self.rest + block[max(self.offset - start, 0): len(block) - max(stop - self.end, 0)]
        usable = len(data) - len(data) % self.dtype.itemsize
        self.rest = data[usable:]
        values = np.frombuffer(data[:usable], dtype=self.dtype)
        self.count += int(values.size - np.count_nonzero(np.isfinite(values)))


def _rounded(values) -> tuple[float, ...]:
    return tuple(float(round(float(v), 4)) for v in values)


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _head(path: Path, size: int = 1 << 16) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(size)


def _nrrd(path: Path) -> None:
    head = _head(path)
    stop = head.find(b"\n\n")
    if not head.startswith(b"NRRD") or stop < 0:
        return
    fields = {}
    for line in head[:stop].decode("latin-1").splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.lstrip("=").strip()
    try:
        sizes = [int(v) for v in fields.get("sizes", "").split()]
    except ValueError:
        return
    spacings = [float(v) for v in fields.get("spacings", "").split() if _number(v)]
    if len(spacings) == len(sizes) == 3:
        _check_spacing(path, "the NRRD header gives spacings", spacings)
    for vector in re.findall(r"\(([^)]*)\)", fields.get("space directions", "")):
        values = [float(v) for v in vector.split(",") if _number(v)]
        if values and not 0 < np.linalg.norm(values) <= MAX_SPACING_MM:
            raise InputError(f"{path}: the NRRD space directions include an axis of length "
                             f"{np.linalg.norm(values):g} ({vector}); every spacing must be a positive number of mm "
                             f"up to {MAX_SPACING_MM:g}")
    attached = not any(k in fields for k in ("data file", "datafile"))
    raw = fields.get("encoding", "").lower() == "raw" and not any(k in fields for k in ("byte skip", "line skip"))
    item = _NRRD_TYPES.get(fields.get("type", "").lower())
    if attached and raw and item and sizes and min(sizes) > 0:
        need = stop + 2 + int(np.prod(sizes, dtype=np.float64)) * item
        if path.stat().st_size < need:
            raise _truncated(path, "header and voxel data", need, path.stat().st_size)


def _meta_fields(path: Path) -> tuple[dict[str, str], re.Match | None]:
    head = _head(path)
    match = re.search(rb"ElementDataFile\s*=\s*([^\r\n]*)\r?\n", head)
    fields = {}
    for line in head[:match.start() if match else len(head)].decode("latin-1").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
    return fields, match


def _meta_syntax(path: Path, fields: dict[str, str]) -> None:
    """The fields MetaIO trusts blindly (it crashes on ``NDims = 1e308``): counts and integer values."""
    def bad(key: str, expected: str) -> InputError:
        return InputError(f"{path}: the MetaImage header is invalid: {key} = {fields[key]!r} (expected {expected})")

    ndims = fields["NDims"]
    if not ndims.isdigit() or not 1 <= int(ndims) <= 6:
        raise bad("NDims", "an integer from 1 to 6")
    n = int(ndims)
    counts = {"DimSize": n, "ElementSpacing": n, "ElementSize": n, "Offset": n, "Origin": n, "Position": n,
              "CenterOfRotation": n, "TransformMatrix": n * n, "Rotation": n * n, "Orientation": n * n}
    for key, count in counts.items():
        if key in fields:
            values = fields[key].split()
            if len(values) != count or not all(_number(v) for v in values):
                raise bad(key, f"{count} numbers")
    if not all(v.isdigit() and int(v) > 0 for v in fields.get("DimSize", "1").split()):
        raise bad("DimSize", f"{n} positive integers")
    channels = fields.get("ElementNumberOfChannels", "1")
    if not channels.isdigit() or not 1 <= int(channels) <= 1024:
        raise bad("ElementNumberOfChannels", "a positive integer")
    if "HeaderSize" in fields and not re.fullmatch(r"-?\d+", fields["HeaderSize"]):
        raise bad("HeaderSize", "an integer")


def _meta(path: Path) -> None:
    fields, match = _meta_fields(path)
    if "NDims" in fields:
        _meta_syntax(path, fields)
    if match is None:
        return
    for key in ("ElementSpacing", "ElementSize"):
        values = [float(v) for v in fields.get(key, "").split() if _number(v)]
        if values:
            _check_spacing(path, f"the MetaImage header gives {key}", values)
    try:
        sizes = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        return
    item = _META_TYPES.get(fields.get("ElementType", ""))
    if not sizes or not item or fields.get("HeaderSize", "0") != "0" or min(sizes) < 1 or channels < 1:
        return
    need = int(np.prod(sizes, dtype=np.float64)) * channels * item
    target = match.group(1).decode("latin-1").strip()
    data = path if target == "LOCAL" else path.parent / target
    if (target != "LOCAL" and ("%" in target or " " in target)) or not data.is_file():
        return  # file lists and missing files: SimpleITK reports them
    skip = match.end() if target == "LOCAL" else 0
    if fields.get("CompressedData", "False").lower() == "true":
        have = _zlib_length(data, skip)
        if have < need:
            raise InputError(f"{data}: the compressed voxel data is truncated or corrupt: it holds {have} of "
                             f"the {need} bytes the header describes")
    elif data.stat().st_size < skip + need:
        raise _truncated(data, "header and voxel data" if skip else "voxel data", skip + need, data.stat().st_size)


def _zlib_length(path: Path, skip: int) -> int:
    """Bytes a zlib stream starting at ``skip`` decompresses to (up to where it breaks off)."""
    import zlib

    inflate, length = zlib.decompressobj(), 0
    with open(path, "rb") as stream:
        stream.seek(skip)
        try:
            while block := stream.read(1 << 20):
                length += len(inflate.decompress(block))
            if not inflate.eof:
                return length
        except zlib.error:
            return length
    return length


_VTK_TYPES = {"unsigned_char": 1, "char": 1, "unsigned_short": 2, "short": 2, "unsigned_int": 4, "int": 4,
              "unsigned_long": 8, "long": 8, "float": 4, "double": 8}


def _vtk(path: Path) -> None:
    """Legacy VTK structured points: DIMENSIONS, POINT_DATA and SPACING must parse (SimpleITK reads an
    unparsable DIMENSIONS as uninitialised memory), agree, and the file must hold the voxel data."""
    head = _head(path, 4096)
    fields = {key: match.group(1).decode("latin-1").split() if match else None
              for key in ("DIMENSIONS", "POINT_DATA", "SPACING")
              for match in [re.search(key.encode() + rb"([^\n]*)\n", head)]}
    sizes, count = fields["DIMENSIONS"], fields["POINT_DATA"]
    if sizes is not None and not (len(sizes) == 3 and all(v.isdigit() for v in sizes)):
        raise InputError(f"{path}: the VTK header is invalid: DIMENSIONS {' '.join(sizes)!r} (expected 3 integers)")
    if count is not None and not (len(count) == 1 and count[0].isdigit()):
        raise InputError(f"{path}: the VTK header is invalid: POINT_DATA {' '.join(count)!r} (expected an integer)")
    voxels = int(np.prod([int(v) for v in sizes], dtype=np.float64)) if sizes is not None else None
    if voxels is not None and count is not None and voxels != int(count[0]):
        raise InputError(f"{path}: the VTK header is invalid: DIMENSIONS {' '.join(sizes)!r} does not match "
                         f"POINT_DATA {count[0]!r}")
    if fields["SPACING"] and all(_number(v) for v in fields["SPACING"]):
        _check_spacing(path, "the VTK header gives SPACING", [float(v) for v in fields["SPACING"]])
    scalars = re.search(rb"SCALARS\s+\S+\s+(\w+)[ \t]*(\S*)", head)
    table = re.search(rb"LOOKUP_TABLE[^\n]*\n", head)
    if not (count and scalars and table):
        return
    components = scalars.group(2)
    item = _VTK_TYPES.get(scalars.group(1).decode("latin-1"))
    if item is None or (components and not components.isdigit()):
        return
    values = int(count[0]) * int(components or 1)
    need = table.end() + (values * item if b"BINARY" in head[:512] else 2 * values - 1)  # ASCII: "v v v"
    if path.stat().st_size < need:
        raise _truncated(path, "header and voxel data", need, path.stat().st_size)


def check_file_header(path: Path, io_name: str) -> None:
    """NRRD, MetaImage and binary VTK: spacings and truncation that SimpleITK misreports or misses."""
    if io_name == "NrrdImageIO" and not path.name.lower().endswith(".gz"):
        _nrrd(path)
    elif io_name == "MetaImageIO":
        _meta(path)
    elif io_name == "VTKImageIO":
        _vtk(path)


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounding box (mm) of the voxel centres of ``image``."""
    size = np.array(image.GetSize()) - 1
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.array(np.meshgrid(*[[0, n] for n in size], indexing="ij")).reshape(3, -1).T]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def check_overlap(fixed: sitk.Image, moving: sitk.Image, affine: bool) -> bool:
    """Whether the two images overlap in physical space.

    Without the affine pre-alignment a pair that does not overlap cannot be registered
    (the moving image would be resampled as background everywhere): refuse. With it the
    affine starts by aligning the image centres, so the run goes on with a warning.
    """
    (fixed_low, fixed_high), (moving_low, moving_high) = physical_bounds(fixed), physical_bounds(moving)
    overlap = bool(np.all(np.maximum(fixed_low, moving_low) <= np.minimum(fixed_high, moving_high)))
    if not overlap:
        spans = (f"fixed spans {_box(fixed_low, fixed_high)} mm, moving spans {_box(moving_low, moving_high)} mm "
                 f"(LPS)")
        if not affine:
            raise InputError(f"the fixed and moving images do not overlap in physical space ({spans}); without the "
                             f"affine pre-alignment nothing can be registered: drop --no-affine (the affine starts "
                             f"by aligning the image centres) or correct the image origins")
        log.warning("the fixed and moving images do not overlap in physical space (%s); the affine pre-alignment "
                    "starts by aligning the image centres", spans)
    return overlap


def _box(low: np.ndarray, high: np.ndarray) -> str:
    return "[" + ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(low, high)) + "]"


def check_grid(fixed: sitk.Image, grid: sitk.Image) -> None:
    """Refuse a working grid with fewer than :data:`MIN_WORKING_VOXELS` voxels along an axis."""
    from ..preprocess.grid import working_grid

    if min(grid.GetSize()) >= MIN_WORKING_VOXELS:
        return
    extent = min((n - 1) * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing()))
    finer = math.floor(extent / (MIN_WORKING_VOXELS - 1) * 100) / 100
    while finer > 0.01 and min(working_grid(fixed, finer).GetSize()) < MIN_WORKING_VOXELS:
        finer = round(finer - 0.01, 2)
    raise InputError(f"the working grid {grid.GetSize()} at {grid.GetSpacing()[0]:g} mm is too small: registration "
                     f"needs at least {MIN_WORKING_VOXELS} voxels along every axis; use --spacing {finer:g} or finer "
                     f"(the fixed image spans {extent:g} mm along its shortest axis)")


def check_run(fixed: sitk.Image, moving: sitk.Image, grid: sitk.Image, device, network: bool,
              affine: bool) -> int:
    """All checks on a pair before a run starts: overlap, working grid, memory; returns the memory estimate."""
    from ..preprocess.grid import working_grid
    from ..pipeline.memory import check_memory

    check_overlap(fixed, moving, affine)
    check_grid(fixed, grid)

    def size_if_usable(spacing: float) -> tuple[int, ...]:
        size = working_grid(fixed, spacing).GetSize()
        return size if min(size) >= MIN_WORKING_VOXELS else (1 << 20,) * 3  # "does not fit"

    return check_memory(grid.GetSize(), fixed.GetSize(), device, network, spacing=grid.GetSpacing()[0],
                        grid_size=size_if_usable)
