"""Stop strings matched on streamed text, across chunk boundaries."""

from yap_core.stops import StopMatcher


def run(stops: tuple[str, ...], chunks: list[str]) -> tuple[str, bool]:
    scanner = StopMatcher(stops)
    out = []
    for chunk in chunks:
        text, stopped = scanner.feed(chunk)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + scanner.flush(), False


def test_stop_split_across_chunks_is_never_emitted():
    assert run(("END",), ["Hello E", "N", "D and more"]) == ("Hello ", True)


def test_partial_match_that_fails_is_released():
    scanner = StopMatcher(("END",))
    assert scanner.feed("Hello EN") == ("Hello ", False)
    assert scanner.feed("ough") == ("ENough", False)


def test_earliest_of_several_stops_wins():
    assert run(("world", "lo"), ["Hello world"]) == ("Hel", True)


def test_no_stop_passes_everything_through_and_flushes():
    assert run((), ["a", "b"]) == ("ab", False)
    assert run(("xyz",), ["ends with x"]) == ("ends with x", False)
