"""What the CPU can compute fast: ISA extensions, matrix units, threads; and the rules built on them.

`detect()` reads the CPU flags once per call (Linux `/proc/cpuinfo`: x86 `flags`, ARM `Features`;
macOS `sysctl hw.optional.*`) plus torch's own view (`torch.backends.cpu.get_cpu_capability()`,
which names the vector ISA torch's kernels were dispatched to) and returns a frozen `CpuInfo`.
Nothing is cached at module level: callers pass the `CpuInfo` on, and tests build one with
`CpuInfo.from_flags(...)` to exercise the rules on machines they do not have.

Hardware classes (docs/hardware.md explains what each means for precision and int8 kernels):

  amx          Intel AMX tiles (amx_bf16 / amx_int8; Sapphire Rapids and later)
  avx512_bf16  AVX-512 with native bf16 dot products (avx512_bf16; Cooper Lake, AMD Zen 4/5)
  avx512_vnni  AVX-512 with int8 dot products (avx512_vnni) but no bf16 (Cascade Lake, Ice Lake)
  avx512       AVX-512F without VNNI (Skylake-SP)
  avx2         AVX2 only (older Xeons, AMD Zen 1-3, most laptops; avx_vnni adds int8 dots)
  arm_bf16     ARMv8.6+ with bf16 (and usually i8mm): Graviton 3/4, Apple M2+
  arm          ARM NEON / SVE without bf16
  generic      anything else

    >>> info = detect()                                       # doctest: +SKIP
    >>> info.hardware_class, info.native_bf16, info.int8_dot  # doctest: +SKIP
    ('avx512_vnni', False, True)
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# /proc/cpuinfo flag names we report (x86 "flags", ARM "Features"); others are dropped.
X86_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
ARM_FLAGS = ("asimd", "asimddp", "sve", "sve2", "bf16", "i8mm", "svebf16", "svei8mm", "fphp", "asimdhp")
# macOS sysctl keys -> the Linux flag name they stand for
_DARWIN_KEYS = {"hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_I8MM": "i8mm",
                "hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.neon": "asimd",
                "hw.optional.arm.FEAT_FP16": "fphp"}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's relevant features. Build with `detect()` (this machine) or `from_flags` (tests).

    Args:
        arch: 'x86_64', 'aarch64', ... (platform.machine()).
        flags: the subset of X86_FLAGS / ARM_FLAGS the CPU reports.
        torch_capability: torch's dispatch ISA ('AVX512', 'AVX2', 'DEFAULT', 'SVE256', ...).
        threads: torch intra-op threads; cpu_count: logical CPUs of the machine.
    """

    arch: str
    flags: frozenset[str] = field(default_factory=frozenset)
    torch_capability: str = "unknown"
    threads: int = 1
    cpu_count: int = 1
    name: str = ""

    @classmethod
    def from_flags(cls, flags, *, arch: str = "x86_64", torch_capability: str = "unknown", threads: int = 2,
                   cpu_count: int = 2, name: str = "") -> "CpuInfo":
        """A CpuInfo with the given flags (what tests inject instead of the real machine)."""
        return cls(arch=arch, flags=frozenset(flags), torch_capability=torch_capability, threads=threads,
                   cpu_count=cpu_count, name=name)

    @property
    def is_arm(self) -> bool:
        return self.arch.lower() in ("aarch64", "arm64")

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def amx(self) -> bool:
        return self.has("amx_bf16") or self.has("amx_int8")

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (AVX512-BF16, AMX-BF16, ARM BF16). Without them torch
        emulates bf16 by converting to fp32, which is slower than computing in fp32."""
        return self.has("avx512_bf16") or self.has("amx_bf16") or (self.is_arm and self.has("bf16"))

    @property
    def int8_dot(self) -> bool:
        """int8 dot-product instructions (VNNI, AMX-INT8, ARM SDOT/I8MM): int8 GEMMs gain over fp32
        by more than the bandwidth saving."""
        return (self.has("avx512_vnni") or self.has("avx_vnni") or self.has("amx_int8")
                or (self.is_arm and (self.has("asimddp") or self.has("i8mm"))))

    @property
    def hardware_class(self) -> str:
        """One of the classes in the module docstring (what docs/hardware.md tabulates)."""
        if self.is_arm:
            return "arm_bf16" if self.has("bf16") else "arm"
        if self.amx:
            return "amx"
        if self.has("avx512_bf16"):
            return "avx512_bf16"
        if self.has("avx512f"):
            return "avx512_vnni" if self.has("avx512_vnni") else "avx512"
        if self.has("avx2"):
            return "avx2"
        return "generic"

    def summary(self) -> str:
        """One line for report headers: class, units, threads."""
        units = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                             "asimd", "asimddp", "sve", "bf16", "i8mm") if self.has(f)]
        return (f"{self.hardware_class} [{' '.join(units) or 'no SIMD flags found'}], torch ISA "
                f"{self.torch_capability}, {self.threads} threads")

    def to_dict(self) -> dict:
        return {"arch": self.arch, "hardware_class": self.hardware_class, "summary": self.summary(),
                "flags": sorted(self.flags),
                "native_bf16": self.native_bf16, "int8_dot": self.int8_dot, "amx": self.amx,
                "torch_capability": self.torch_capability, "threads": self.threads, "cpu_count": self.cpu_count}


def parse_cpuinfo(text: str) -> frozenset[str]:
    """The known flags in a /proc/cpuinfo text (first 'flags' or 'Features' line)."""
    known = set(X86_FLAGS) | set(ARM_FLAGS)
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(f for f in value.split() if f in known)
    return frozenset()


def _darwin_flags() -> frozenset[str]:
    flags = set()
    for key, flag in _DARWIN_KEYS.items():
        try:
            out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if out == "1":
            flags.add(flag)
    return frozenset(flags)


def _torch_capability() -> str:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError, RuntimeError):
        return "unknown"


def _cpu_name(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def detect(cpuinfo_path: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """This machine's CpuInfo (reads the flags afresh on every call; cheap)."""
    import torch

    try:
        text = Path(cpuinfo_path).read_text()
    except OSError:
        text = ""
    flags = parse_cpuinfo(text)
    if not flags and platform.system() == "Darwin":
        flags = _darwin_flags()
    return CpuInfo(arch=platform.machine(), flags=flags, torch_capability=_torch_capability(),
                   threads=torch.get_num_threads(), cpu_count=os.cpu_count() or 1, name=_cpu_name(text))
