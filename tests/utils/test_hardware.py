"""Hardware detection: parsing real cpuinfo texts of the three CPU classes, and the class rule."""

from __future__ import annotations

import pytest

from sparseft.utils.env import describe_environment
from sparseft.utils.hardware import CpuInfo, detect, parse_cpuinfo

# Trimmed /proc/cpuinfo lines of the machines the issue mentions.
AMX_XEON = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2 fma avx512f avx512bw " \
           "avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16\n"
VNNI_XEON = "model name\t: Intel(R) Xeon(R) Platinum 8259CL\nflags\t\t: fpu avx2 fma f16c avx512f avx512bw " \
            "avx512vl avx512_vnni\n"
ZEN2 = "model name\t: AMD EPYC 7R32\nflags\t\t: fpu sse avx avx2 fma f16c sha_ni\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes asimddp sve sve2 bf16 " \
            "i8mm svebf16\n"


@pytest.mark.parametrize("text, arch, cls, bf16, int8", [
    (AMX_XEON, "x86_64", "amx", True, True),
    (VNNI_XEON, "x86_64", "avx512_vnni", False, True),
    (ZEN2, "x86_64", "avx2", False, False),
    (GRAVITON3, "aarch64", "arm_bf16", True, True),
    ("flags\t: fpu sse avx avx2 avx_vnni\n", "x86_64", "avx2", False, True),            # Alder Lake
    ("flags\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n", "x86_64", "avx512_bf16", True, True),  # Zen 4
    ("Features\t: fp asimd\n", "aarch64", "arm", False, False),
    ("", "x86_64", "generic", False, False),
])
def test_classes_from_cpuinfo(text, arch, cls, bf16, int8):
    info = CpuInfo.from_flags(parse_cpuinfo(text), arch=arch)
    assert (info.hardware_class, info.native_bf16, info.int8_dot) == (cls, bf16, int8)


def test_arm_bf16_flag_does_not_count_on_x86():
    # "bf16" is an ARM Features name; an x86 flags line never has it, but the rule must not rely on that
    assert not CpuInfo.from_flags({"bf16"}, arch="x86_64").native_bf16


def test_unknown_flags_dropped_and_summary():
    flags = parse_cpuinfo(AMX_XEON)
    assert "fpu" not in flags and {"amx_int8", "avx512_bf16"} <= flags
    info = CpuInfo.from_flags(flags, torch_capability="AVX512", threads=2)
    d = info.to_dict()
    assert d["hardware_class"] == "amx" and d["amx"] and "amx_int8" in d["summary"] and "2 threads" in d["summary"]


def test_detect_this_machine_and_environment_record(tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text(ZEN2)
    info = detect(fake)
    assert info.hardware_class == "avx2" and info.name == "AMD EPYC 7R32" and info.threads >= 1
    env = describe_environment()
    assert env["hardware"]["hardware_class"] == detect().hardware_class
    assert env["hardware"]["summary"]
