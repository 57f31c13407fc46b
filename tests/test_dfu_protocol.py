"""DfuSe memory layouts and DFU status words: what the client reads from a device, and says back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import FailureCode, ProtocolError
from agent.hw.dfu_parts import identify
from agent.hw.dfu_status import STATUS_MEANING, DeviceStatus, DfuState, DfuStatus, DfuStatusError
from agent.hw.dfuse import MemoryType, parse_layout

F4_FLASH = "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg"


def test_the_stm32f4_flash_layout() -> None:
    layout = parse_layout(F4_FLASH, where="alt 0")
    assert layout.name == "Internal Flash"
    pages = layout.pages()
    assert len(pages) == 12
    assert pages[0] == (0x0800_0000, 16 * 1024)
    assert pages[4] == (0x0801_0000, 64 * 1024)
    assert pages[-1] == (0x080E_0000, 128 * 1024)
    assert layout.covers(0x0800_0000, 1024 * 1024, MemoryType.WRITABLE | MemoryType.ERASABLE)
    assert not layout.covers(0x0800_0000, 1024 * 1024 + 1, MemoryType.READABLE)


@pytest.mark.parametrize(("text", "pages", "kind"), [
    ("@Option Bytes  /0x1FFFC000/01*016 e", [(0x1FFF_C000, 16)], MemoryType(5)),
    ("@OTP Memory /0x1FFF7800/01*512 e,01*016 e", [(0x1FFF_7800, 512), (0x1FFF_7A00, 16)],
     MemoryType(5)),
    ("@Internal Flash  /0x08000000/16*001Ka,112*001Kg", None, MemoryType(1)),  # GD32: read-only
    ("@Flash/0x08000000/2*02Kg/0x20000000/1*1Me", [(0x0800_0000, 2048), (0x0800_0800, 2048),
                                                   (0x2000_0000, 1024 * 1024)], MemoryType(7)),
    ("@Option Bytes  /0x1FFFF800/01*016Be", [(0x1FFF_F800, 16)], MemoryType(5)),
])
def test_layouts_real_devices_declare(
    text: str, pages: list[tuple[int, int]] | None, kind: MemoryType
) -> None:
    layout = parse_layout(text, where="alt 1")
    if pages is not None:
        assert layout.pages() == pages
    assert layout.segments[0].kind == kind


@pytest.mark.parametrize(("text", "said"), [
    ("Internal Flash/0x08000000/04*016Kg", "start with '@'"),
    ("@Internal Flash/0x08000000", "pairs of '/<address>/<segments>'"),
    ("@Internal Flash/08000000/04*016Kg", "'08000000' is not 0x"),
    ("@Internal Flash/0x08000000/04*016Kg,01*064Xg", "segment 2 '01*064Xg'"),
    ("@Internal Flash/0x08000000/04*016Kz", "type a..g"),
    ("@Internal Flash/0x08000000/00*016Kg", "segment 1"),
])
def test_a_malformed_layout_is_named_with_what_was_expected(text: str, said: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_layout(text, where="alt setting 0")
    message = str(caught.value)
    assert message.startswith("alt setting 0: memory layout")
    assert repr(text) in message
    assert said in message


@given(st.lists(st.tuples(st.integers(1, 64), st.sampled_from([1, 2, 16, 64, 128]),
                          st.sampled_from("abcdefg")), min_size=1, max_size=6))
def test_layout_round_trip(segments: list[tuple[int, int, str]]) -> None:
    text = "@Flash /0x08000000/" + ",".join(f"{n:02d}*{k:03d}K{t}" for n, k, t in segments)
    layout = parse_layout(text, where="generated")
    assert sum(size for _, size in layout.pages()) == sum(n * k * 1024 for n, k, _ in segments)
    starts = [start for start, _ in layout.pages()]
    assert starts == sorted(starts)


def test_a_device_with_an_unknown_flash_is_a_target_mismatch() -> None:
    with pytest.raises(ProtocolError) as caught:
        identify(parse_layout("@Internal Flash  /0x08000000/64*002Kg", where="alt 0"), "stm32f4")
    assert caught.value.code is FailureCode.TARGET_MISMATCH
    assert "64x2048 B at 0x08000000" in str(caught.value)
    with pytest.raises(ProtocolError) as caught:
        identify(parse_layout(F4_FLASH, where="alt 0"), "stm32l4")
    assert caught.value.code is FailureCode.TARGET_MISMATCH
    assert "STM32F40x" in str(caught.value)


def test_every_dfu_error_status_has_a_failure_code_and_a_sentence() -> None:
    errors = [status for status in DfuStatus if status is not DfuStatus.OK]
    assert sorted(STATUS_MEANING) == errors
    for status in errors:
        error = DfuStatusError("write block at 0x08000000", status, region="app")
        assert error.code is STATUS_MEANING[status][0]
        assert f"(err{status.name[4:]})" in str(error)  # DFU 1.1's own name: (errCHECK_ERASED)
        assert "region app" in str(error)
    assert DfuStatusError("x", DfuStatus.ERR_VENDOR).code is FailureCode.TARGET_LOCKED
    assert DfuStatusError("x", DfuStatus.ERR_ERASE).code is FailureCode.ERASE_FAILED
    assert DfuStatusError("x", DfuStatus.ERR_PROG).code is FailureCode.WRITE_FAILED
    assert DfuStatusError("x", DfuStatus.ERR_POR).code is FailureCode.PROBE_LOST


def test_getstatus_answers_are_checked() -> None:
    status = DeviceStatus.parse(bytes([0x00, 0x10, 0x27, 0x00, 0x04, 0x00]))
    assert (status.state, status.poll_timeout_ms) == (DfuState.DNBUSY, 10_000)
    with pytest.raises(ProtocolError, match="5 bytes"):
        DeviceStatus.parse(bytes(5))
    with pytest.raises(ProtocolError, match="state 11"):
        DeviceStatus.parse(bytes([0, 0, 0, 0, 11, 0]))
