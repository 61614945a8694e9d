"""The SM table: which formats each architecture gets, and the errors."""

import pytest
from yap_engines_trt.sm import check_format, default_format, formats_for_sm


@pytest.mark.parametrize(
    ("sm", "expected"),
    [
        ((7, 5), []),
        ((8, 0), ["int4_awq", "int8_sq"]),
        ((8, 6), ["int4_awq", "int8_sq"]),
        ((8, 9), ["int4_awq", "fp8"]),
        ((9, 0), ["int4_awq", "fp8"]),
        ((10, 0), ["int4_awq", "fp8", "nvfp4"]),
        ((12, 0), ["int4_awq", "fp8", "nvfp4"]),
    ],
)
def test_formats_per_architecture(sm, expected):
    assert formats_for_sm(sm) == expected


@pytest.mark.parametrize(
    ("bits", "sm", "fmt"),
    [(4, (8, 0), "int4_awq"), (8, (8, 0), "int8_sq"), (8, (8, 6), "int8_sq"), (8, (8, 9), "fp8"), (8, (9, 0), "fp8")],
)
def test_default_format_by_bits(bits, sm, fmt):
    assert default_format(bits, sm) == fmt


def test_fp8_on_a100_is_a_clear_error_listing_what_is_there():
    with pytest.raises(ValueError) as err:
        check_format("fp8", (8, 0))
    text = str(err.value)
    assert "SM 8.0" in text and "int4_awq, int8_sq" in text and "8.9" in text


def test_nvfp4_needs_blackwell():
    with pytest.raises(ValueError, match="SM 9.0"):
        check_format("nvfp4", (9, 0))
    assert check_format("nvfp4", (10, 0)).modelopt_cfg == "NVFP4_DEFAULT_CFG"


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown format 'int3'"):
        check_format("int3", (9, 0))


def test_no_format_below_ampere():
    with pytest.raises(ValueError, match="SM 8.0 or newer"):
        default_format(8, (7, 5))
