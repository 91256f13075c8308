"""audio.py: every bad file gets its reason, good files decode to the right samples at the right rate."""

import csv
import struct
import threading
import time

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakhunter.audio import REASONS, Audio, AudioError, load_audio, parse_channel_policy, read_many

RATE = 4096


def sine(freq_hz: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def write(path, samples, rate=RATE, subtype="FLOAT", **kwargs):
    soundfile.write(path, samples, rate, subtype=subtype, **kwargs)
    return path


def reason_of(path, **kwargs) -> AudioError:
    with pytest.raises(AudioError) as caught:
        load_audio(path, RATE, **kwargs)
    return caught.value


def pcm16_wav_header(channels: int, rate: int, riff_size: int, data_size: int) -> bytes:
    """A canonical 44-byte PCM_16 WAV header with the two size fields given by hand."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_size))


# --- one crafted file per reason ------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    error = reason_of(tmp_path / "gone.wav")
    assert error.reason == "missing" and "gone.wav" in str(error)


def test_a_folder_is_missing_not_a_crash(tmp_path):
    assert reason_of(tmp_path).reason == "missing"


def test_zero_byte_file_is_empty(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    error = reason_of(tmp_path / "zero.wav")
    assert error.reason == "empty" and "zero.wav" in str(error) and "0 bytes" in error.detail


def test_44_byte_wav_is_header_only(tmp_path):
    path = write(tmp_path / "header.wav", np.zeros(0, np.float32), subtype="PCM_16")
    assert path.stat().st_size == 44
    error = reason_of(path)
    assert error.reason == "header_only" and "header.wav" in str(error) and "44 bytes" in error.detail


def test_wav_cut_in_half_is_truncated(tmp_path):
    whole = write(tmp_path / "whole.wav", sine(300, RATE, 8000 / RATE), subtype="PCM_16")  # 16000 data bytes
    data = whole.read_bytes()
    (tmp_path / "half.wav").write_bytes(data[:len(data) // 2])
    error = reason_of(tmp_path / "half.wav")
    assert error.reason == "truncated" and "half.wav" in str(error)
    assert "16000" in error.detail and "7978" in error.detail and "49.9 %" in error.detail


def test_random_bytes_are_a_decode_error(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    error = reason_of(path)
    assert error.reason == "decode_error" and "noise.wav" in str(error)
    assert "Format not recognised" in error.detail  # libsndfile's own words


@pytest.mark.parametrize("text", ["time,pressure\n0.0,1.2\n0.1,1.3\n",
                                  "<!DOCTYPE html><html><body>404 Not Found</body></html>",
                                  "\ufeffcapteur;débit\n1;2\n"])
def test_text_renamed_wav_is_not_audio(tmp_path, text):
    path = tmp_path / "export.wav"
    path.write_text(text, encoding="utf-8")
    error = reason_of(path)
    assert error.reason == "not_audio" and "export.wav" in str(error) and "text" in error.detail


def test_nan_in_float_wav_is_non_finite(tmp_path):
    samples = sine(300, RATE, 0.5)
    samples[[10, 20, 30]] = [np.nan, np.inf, -np.inf]
    error = reason_of(write(tmp_path / "nan.wav", samples))
    assert error.reason == "non_finite" and "nan.wav" in str(error) and error.detail.startswith("3 of 2048")


def test_all_zero_wav_is_silent(tmp_path):
    error = reason_of(write(tmp_path / "zeros.wav", np.zeros(RATE, np.float32), subtype="PCM_16"))
    assert error.reason == "silent" and "zeros.wav" in str(error) and "amplitude 0 " in error.detail


def test_constant_dc_offset_is_silent(tmp_path):
    assert reason_of(write(tmp_path / "dc.wav", np.full(RATE, 0.25, np.float32))).reason == "silent"


def test_short_wav_is_too_short(tmp_path):
    path = write(tmp_path / "blip.wav", sine(300, RATE, 0.125))
    error = reason_of(path, min_samples=1024)
    assert error.reason == "too_short" and "blip.wav" in str(error)
    assert error.detail == "0.125 s; need at least 0.25 s (1024 samples at 4096 Hz)"


def test_too_short_is_judged_after_resampling(tmp_path):
    path = write(tmp_path / "blip.wav", sine(300, 16000, 0.2), rate=16000)  # 3200 samples in, 819 out
    assert reason_of(path, min_samples=1000).reason == "too_short"
    assert load_audio(path, RATE, min_samples=800).samples.size == pytest.approx(819, abs=1)


def test_channel_index_beyond_the_file_is_bad_channel(tmp_path):
    error = reason_of(write(tmp_path / "mono.wav", sine(300, RATE, 0.5)), channel=1)
    assert error.reason == "bad_channel" and "mono.wav" in str(error) and "1 channel " in error.detail


def test_every_reason_has_a_test_above():
    tested = {"missing", "empty", "header_only", "truncated", "not_audio", "decode_error",
              "non_finite", "silent", "too_short", "bad_channel"}
    assert set(REASONS) == tested


def test_unknown_reason_is_refused():
    with pytest.raises(AssertionError):
        AudioError("clipped", "a.wav", "clipping is a flag, not an error")


def test_audio_error_message_names_file_reason_and_detail():
    error = AudioError("empty", "/data/n1/a.wav", "0 bytes")
    assert (error.reason, error.path, error.detail) == ("empty", "/data/n1/a.wav", "0 bytes")
    assert str(error) == "/data/n1/a.wav: empty: 0 bytes"


# --- what libsndfile 1.2.2 does with other containers -------------------------------------------------------------

def test_flac_missing_its_last_third_is_not_decoded(tmp_path):
    whole = write(tmp_path / "whole.flac", sine(300, RATE, 4.0), subtype="PCM_16")
    data = whole.read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[:len(data) * 2 // 3])
    error = reason_of(tmp_path / "cut.flac")
    # libsndfile 1.2.2 still reports all 16384 frames in sf.info, then raises "flac decoder lost sync" on read,
    # so this arrives as a decode_error with libsndfile's message rather than as truncated.
    assert error.reason == "decode_error" and "lost sync" in error.detail


def test_streaming_wav_with_unknown_data_size_is_not_truncated(tmp_path):
    pcm = (sine(300, RATE, 1.0) * 32767).astype("<i2").tobytes()
    path = tmp_path / "stream.wav"
    path.write_bytes(pcm16_wav_header(1, RATE, 0xFFFFFFFF, 0xFFFFFFFF) + pcm)
    audio = load_audio(path, RATE)
    assert audio.samples.size == RATE and not audio.resampled


def test_wav_with_data_chunk_after_other_chunks_is_walked(tmp_path):
    """A JUNK chunk (odd size, so padded) before data must not be mistaken for truncation."""
    pcm = (sine(300, RATE, 0.5) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, RATE, RATE * 2, 2, 16)
    junk = b"reserved!"  # 9 bytes: padded to 10
    body = (b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"JUNK" + struct.pack("<I", len(junk)) + junk
            + b"\0" + b"data" + struct.pack("<I", len(pcm)) + pcm)
    path = tmp_path / "listed.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert load_audio(path, RATE).samples.size == 2048
    path.write_bytes((b"RIFF" + struct.pack("<I", len(body)) + body)[:-1000])
    assert "4096 data bytes but only 3096" in reason_of(path).detail


def test_mp3_renamed_wav_decodes_by_content(tmp_path):
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    path = tmp_path / "actually-mp3.wav"
    soundfile.write(path, sine(300, 16000, 1.0), 16000, format="MP3")
    # libsndfile 1.2.2 sniffs the MPEG frame sync: the content, not the .wav extension, decides the decoder.
    audio = load_audio(path, RATE)
    assert audio.sample_rate_in == 16000 and audio.duration_s == pytest.approx(1.0, abs=0.01)


# --- good files -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate_in", [4096, 8000, 16000, 44100, 48000])
def test_resampled_sine_keeps_length_pitch_and_level(tmp_path, rate_in):
    seconds = 2.0
    native = sine(300, rate_in, seconds)
    audio = load_audio(write(tmp_path / "tone.wav", native, rate=rate_in), RATE)
    assert audio.sample_rate == RATE and audio.sample_rate_in == rate_in and audio.resampled == (rate_in != RATE)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1 and audio.samples.flags.c_contiguous
    assert abs(audio.samples.size - round(seconds * RATE)) <= 1
    spectrum = np.abs(np.fft.rfft(audio.samples))
    peak_hz = np.argmax(spectrum) * RATE / audio.samples.size
    assert peak_hz == pytest.approx(300, abs=2)
    rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))  # noqa: E731
    assert rms(audio.samples) == pytest.approx(rms(native), rel=0.01)
    assert audio.duration_s == pytest.approx(seconds)


@pytest.fixture
def stereo(tmp_path):
    left, right = sine(300, RATE, 0.5, 0.5), sine(700, RATE, 0.5, 0.2)
    return write(tmp_path / "stereo.wav", np.stack([left, right], axis=1)), left, right


def test_channel_policies_pick_or_average(stereo):
    path, left, right = stereo
    first, mean, second = (load_audio(path, RATE, channel=c) for c in ("first", "mean", 1))
    assert first.channels_in == mean.channels_in == second.channels_in == 2
    assert (first.channel_policy, mean.channel_policy, second.channel_policy) == ("first", "mean", "1")
    np.testing.assert_array_equal(first.samples, left)
    np.testing.assert_array_equal(second.samples, right)
    np.testing.assert_allclose(mean.samples, (left + right) / 2, atol=1e-7)


def test_channel_policy_given_as_text_index(stereo):
    path, _, right = stereo
    np.testing.assert_array_equal(load_audio(path, RATE, channel="1").samples, right)


def test_duplicated_stereo_mean_equals_mono(tmp_path):
    mono = sine(300, 8000, 0.5)
    from_mono = load_audio(write(tmp_path / "mono.wav", mono, rate=8000), RATE)
    from_stereo = load_audio(write(tmp_path / "dup.wav", np.stack([mono, mono], axis=1), rate=8000), RATE)
    np.testing.assert_array_equal(from_stereo.samples, from_mono.samples)
    assert (from_mono.channels_in, from_stereo.channels_in) == (1, 2)


def test_full_scale_square_wave_is_flagged_clipped_not_refused(tmp_path):
    square = np.sign(sine(50, RATE, 1.0)).astype(np.float32)
    square[square == 0] = 1.0
    assert load_audio(write(tmp_path / "square.wav", square, subtype="PCM_16"), RATE).clipped


def test_quiet_sine_is_not_clipped(tmp_path):
    assert not load_audio(write(tmp_path / "quiet.wav", sine(300, RATE, 1.0, 0.1)), RATE).clipped


def test_parse_channel_policy_refuses_other_values():
    assert parse_channel_policy(" Mean ") == "mean" and parse_channel_policy("first") == "first"
    for bad in ("left", "-1", -1, "1.5", True, ""):
        with pytest.raises(ValueError, match="'first', 'mean'"):
            parse_channel_policy(bad)
    with pytest.raises(ValueError):
        load_audio("anything.wav", RATE, channel="left")


@given(st.integers(min_value=0, max_value=10_000))
def test_parse_channel_policy_round_trips_indices(index):
    assert parse_channel_policy(index) == index == parse_channel_policy(str(index))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=st.lists(st.floats(-1, 1, width=32), min_size=1, max_size=300),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), where=st.floats(0, 1, exclude_max=True))
def test_any_float_wav_holding_a_nan_or_inf_is_non_finite(tmp_path, samples, bad, where):
    samples = np.array(samples, np.float32)
    samples[int(where * samples.size)] = bad
    error = reason_of(write(tmp_path / "bad.wav", samples))
    assert error.reason == "non_finite" and error.detail.startswith("1 of ")


# --- read_many ------------------------------------------------------------------------------------------------------

def test_read_many_keeps_input_order_when_early_items_are_slow():
    def load(index):
        time.sleep(0.05 * (6 - index) / 6)  # item 0 is the slowest
        return index * 10
    assert list(read_many(range(6), load, workers=3)) == [(i, i * 10) for i in range(6)]


def test_read_many_turns_failures_into_errors_and_carries_on():
    def load(name):
        if name == "broken.wav":
            raise KeyError("no such key")
        if name == "silent.wav":
            raise AudioError("silent", name, "peak-to-peak amplitude 0")
        return name.upper()
    results = dict(read_many(["a.wav", "broken.wav", "silent.wav", "b.wav"], load, workers=2))
    assert results["a.wav"] == "A.WAV" and results["b.wav"] == "B.WAV"
    assert results["broken.wav"].reason == "decode_error" and "KeyError" in results["broken.wav"].detail
    assert str(results["broken.wav"]).startswith("broken.wav: decode_error: KeyError")
    assert results["silent.wav"].reason == "silent"


def test_read_many_never_runs_further_ahead_than_read_ahead():
    lock, started, consumed, most_ahead = threading.Lock(), [0], [0], [0]

    def load(index):
        with lock:
            started[0] += 1
            most_ahead[0] = max(most_ahead[0], started[0] - consumed[0])
        return index

    for _ in read_many(range(40), load, workers=2, read_ahead=3):
        time.sleep(0.002)  # a slow consumer: unbounded workers would race ahead
        with lock:
            consumed[0] += 1
    assert consumed[0] == 40 and most_ahead[0] == 3


def test_read_many_with_one_worker_runs_inline():
    caller = threading.get_ident()
    threads = [thread for _, thread in read_many(range(3), lambda _: threading.get_ident(), workers=1)]
    assert threads == [caller] * 3


def test_read_many_yields_audio_from_real_loads(tmp_path):
    good = write(tmp_path / "good.wav", sine(300, RATE, 0.5))
    (tmp_path / "zero.wav").write_bytes(b"")
    results = list(read_many([good, tmp_path / "zero.wav"], lambda p: load_audio(p, RATE)))
    assert isinstance(results[0][1], Audio) and results[1][1].reason == "empty"


# --- real recordings ------------------------------------------------------------------------------------------------

def test_real_hydrophone_recordings_load_at_model_rate(real_data_dir):
    with open(real_data_dir / "labels.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 5
    for row in rows:
        audio = load_audio(real_data_dir / row["path"], RATE)
        assert audio.resampled and audio.sample_rate_in == 8000 and audio.channels_in == 1
        assert audio.duration_s == pytest.approx(float(row["duration_s"]), abs=0.01)
        assert abs(audio.samples.size - audio.duration_s * RATE) <= 1
