"""audio.py: every bad file gets its reason, good files decode to the right samples at the right rate."""

import csv
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest
import soundfile
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakhunter.audio import (
    REASONS,
    Audio,
    AudioError,
    AudioInfo,
    DecodeBugError,
    load_audio,
    open_audio,
    parse_channel_policy,
    read_many,
)
from leakhunter.errors import LeakhunterError

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
    assert "Format not recognised" in error.detail  # libsndfile's own words ...
    assert str(tmp_path) not in error.detail and "b'" not in error.detail  # ... without the path as bytes
    mp3 = tmp_path / "noise.mp3"
    mp3.write_bytes(np.random.default_rng(0).bytes(3000))
    detail = reason_of(mp3).detail  # libsndfile's MP3 reader calls bytes it cannot parse "not a regular file"
    assert "not a regular file" in detail and detail.endswith("It is a regular file: its content is what cannot "
                                                              "be read)"), detail


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


def test_channels_that_cancel_in_the_mean_say_so_and_one_alone_scores(tmp_path):
    tone = sine(300, RATE, 1.0)
    path = write(tmp_path / "inverted.wav", np.stack([tone, -tone], axis=1))
    error = reason_of(path)
    assert error.reason == "silent" and "the mean of its 2 channels" in error.detail and "--channel N" in error.detail
    assert load_audio(path, RATE, channel=0).samples.size == RATE


def test_a_dead_channel_of_a_mean_mix_is_named(tmp_path):
    tone = sine(300, RATE, 1.0)
    for channels, dead in (([tone, np.zeros_like(tone)], [1]), ([tone, 0.5 * tone], []),
                           ([np.zeros_like(tone), tone, np.zeros_like(tone), tone], [0, 2])):
        path = write(tmp_path / "multi.wav", np.stack(channels, axis=1))
        with open_audio(path, RATE) as stream:
            list(stream)
        assert stream.silent_channels == dead
        live = next(i for i, channel in enumerate(channels) if channel.any())
        with open_audio(path, RATE, channel=live) as stream:  # one channel chosen: nothing is mixed
            list(stream)
        assert stream.silent_channels == []


def test_too_short_says_how_short_to_the_sample(tmp_path):
    error = reason_of(write(tmp_path / "nearly.wav", sine(300, RATE, 1023 / RATE)), min_samples=1024)
    assert error.detail.startswith("0.2498 s; need at least 0.25 s")  # was "0.25 s; need at least 0.25 s"


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


def test_a_file_rewritten_or_removed_while_it_is_read_is_changed(tmp_path):
    """What was read may be neither version: refused (and rows with this status are scored again on --resume)."""
    path = write(tmp_path / "night.wav", sine(300, RATE, 2.0))
    for action, expected in ((lambda: write(path, sine(500, RATE, 3.0)), "changed while it was read"),
                             (path.unlink, "removed while it was read")):
        if not path.exists():
            write(path, sine(300, RATE, 2.0))
        with pytest.raises(AudioError) as caught:
            with open_audio(path, RATE, block_frames=1024) as stream:
                for index, _ in enumerate(stream):
                    if index == 0:
                        action()
        assert caught.value.reason == "changed" and expected in caught.value.detail, caught.value
    write(path, sine(300, RATE, 2.0))
    with open_audio(path, RATE, block_frames=1024) as stream:  # read alone: untouched, no complaint
        assert sum(block.size for block in stream) == RATE * 2


def test_a_rate_too_low_for_the_models_bands_is_refused_before_decoding(tmp_path):
    """Upsampled, a 2-3 kHz recording leaves the model's top mel bands empty; a header claiming 1 Hz would turn
    160 kB into a day of audio at 4096 Hz (gigabytes): both are refused from the header."""
    from leakhunter.card import FrontendConfig, preset
    from leakhunter.mel import lowest_input_rate, mel_points

    cfg = FrontendConfig()
    lowest = lowest_input_rate(cfg)
    assert lowest == pytest.approx(2 * mel_points(cfg)[-2]) and 3800 < lowest < RATE  # the top band's centre
    assert mel_points(cfg)[-1] == pytest.approx(cfg.fmax)
    assert 7800 < lowest_input_rate(preset("wide")[0]) < 8000  # 8 kHz loggers suit the `wide` preset, 6 kHz ones not
    low = write(tmp_path / "low.wav", sine(300, 3000, 1.0), rate=3000)
    error = reason_of(low, min_rate_in=lowest)
    assert error.reason == "low_rate" and "3000 Hz is too low" in error.detail and "3885 Hz or more" in error.detail
    assert load_audio(write(tmp_path / "ok.wav", sine(300, 4000, 1.0), rate=4000), RATE,
                      min_rate_in=lowest).samples.size == RATE  # 4 kHz loggers: Nyquist above the top band's centre
    header = bytearray(write(tmp_path / "one_hz.wav", sine(300, 8000, 10.0), rate=8000, subtype="PCM_16").read_bytes())
    header[24:28] = (1).to_bytes(4, "little")  # the fmt chunk's sample rate
    (tmp_path / "one_hz.wav").write_bytes(bytes(header))
    assert reason_of(tmp_path / "one_hz.wav", min_rate_in=lowest).reason == "low_rate"


@pytest.mark.parametrize("container", ["WAV", "WAVEX", "RF64"])
@pytest.mark.parametrize(("tag", "law", "subtype"), [(7, "µ-law", "ULAW"), (6, "A-law", "ALAW")])
def test_pcm_under_a_companded_format_tag_is_refused_not_decoded_as_noise(tmp_path, container, tag, law, subtype):
    samples = sine(300, 8000, 1.0)
    pcm = bytearray(write(tmp_path / "pcm.wav", samples, rate=8000, subtype="PCM_16", format=container).read_bytes())
    body = pcm.index(b"fmt ") + 8
    at = body + (24 if struct.unpack("<H", pcm[body:body + 2])[0] == 0xFFFE else 0)  # WAVEX: the sub-format's tag
    assert struct.unpack("<H", pcm[at:at + 2])[0] == 1
    pcm[at:at + 2] = struct.pack("<H", tag)
    (tmp_path / "relabelled.wav").write_bytes(bytes(pcm))
    assert soundfile.info(tmp_path / "relabelled.wav").frames == 2 * samples.size  # libsndfile: noise, twice as long
    error = reason_of(tmp_path / "relabelled.wav")
    assert error.reason == "decode_error" and f"says {law} (format tag {tag})" in error.detail
    assert "16 bits per sample and 2 bytes per frame of 1 channel" in error.detail
    pcm[body + 12:body + 14] = struct.pack("<H", 1)  # a block alignment that agrees with the tag: still 16 bits
    (tmp_path / "aligned.wav").write_bytes(bytes(pcm))
    assert soundfile.info(tmp_path / "aligned.wav").frames == 2 * samples.size
    assert "16 bits per sample and 1 byte per frame" in reason_of(tmp_path / "aligned.wav").detail
    # genuine companded files, mono and stereo, decode as before
    genuine = load_audio(write(tmp_path / "real.wav", samples, rate=8000, subtype=subtype, format=container), 8000)
    assert np.abs(genuine.samples - samples).max() < 0.02
    stereo = np.stack([samples, samples], axis=1)
    assert load_audio(write(tmp_path / "real2.wav", stereo, rate=8000, subtype=subtype, format=container),
                      8000).samples.size == samples.size


def test_every_reason_has_a_test_above():
    tested = {"missing", "empty", "header_only", "truncated", "not_audio", "format_mismatch", "decode_error",
              "non_finite", "silent", "too_short", "bad_channel", "changed", "low_rate"}
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


def test_mp3_renamed_wav_is_refused_and_scores_under_its_own_name(tmp_path):
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    path = tmp_path / "actually-mp3.wav"
    soundfile.write(path, sine(300, 16000, 1.0), 16000, format="MP3")
    # libsndfile 1.2.2 sniffs the MPEG frame sync and would decode it; a lossy file posing as PCM is refused.
    with pytest.raises(AudioError) as caught:
        load_audio(path, RATE)
    assert caught.value.reason == "format_mismatch" and "content is MP3 but the name says .wav" in str(caught.value)
    audio = load_audio(path.rename(tmp_path / "actually.mp3"), RATE)
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


# --- streaming: open_audio --------------------------------------------------------------------------------------

def stream_all(path, **kwargs) -> np.ndarray:
    with open_audio(path, RATE, **kwargs) as stream:
        return np.concatenate(list(stream))


@pytest.fixture(scope="module", params=[8000, 48000])
def long_stereo(request, tmp_path_factory):
    """150 000 stereo frames (several 65536-frame blocks) of a tone plus noise, so block edges land mid-signal."""
    rate = request.param
    t = np.arange(150_000) / rate
    noise = np.random.default_rng(rate).standard_normal((t.size, 2)) * 0.05
    frames = np.stack([0.5 * np.sin(2 * np.pi * 300 * t), 0.3 * np.sin(2 * np.pi * 700 * t)], axis=1) + noise
    return write(tmp_path_factory.mktemp("long") / f"stereo{rate}.wav", frames.astype(np.float32), rate=rate), rate


@pytest.mark.parametrize("policy", ["mean", "first"])
@pytest.mark.parametrize("block_frames", [1000, 4096, 65536])
def test_streamed_blocks_equal_load_audio_bit_for_bit_at_any_block_size(long_stereo, policy, block_frames):
    path, rate = long_stereo
    with open_audio(path, RATE, policy, block_frames=block_frames) as stream:
        blocks = list(stream)
    streamed, whole = np.concatenate(blocks), load_audio(path, RATE, policy)
    # soxr releases output in bursts of its own size (about 1178 samples at 48 kHz), not one per block read
    assert len(blocks) > 1 and stream.frames_read == 150_000 and stream.n_samples == whole.samples.size
    np.testing.assert_array_equal(streamed, whole.samples)
    # soxr.ResampleStream fed block by block equals soxr.resample of the whole signal exactly (max |diff| = 0)
    frames = soundfile.read(path, dtype="float32")[0]
    mixed = frames.mean(axis=1, dtype=np.float64).astype(np.float32) if policy == "mean" else frames[:, 0].copy()
    np.testing.assert_array_equal(streamed, soxr.resample(mixed, rate, RATE, quality="HQ"))


def test_open_audio_reports_the_header_before_decoding(long_stereo):
    path, rate = long_stereo
    with open_audio(path, RATE, channel=1) as stream:
        assert stream.info == AudioInfo(path=str(path), sample_rate=RATE, sample_rate_in=rate, channels_in=2,
                                        frames_in=150_000, duration_s=150_000 / rate, channel_policy="1",
                                        resampled=True)
        assert stream.n_samples == stream.frames_read == 0


def empty_file(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    return tmp_path / "zero.wav", {}


def text_file(tmp_path):
    (tmp_path / "export.wav").write_text("time,pressure\n0.0,1.2\n", encoding="utf-8")
    return tmp_path / "export.wav", {}


def noise_file(tmp_path):
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    return tmp_path / "noise.wav", {}


def half_wav(tmp_path):
    data = write(tmp_path / "whole.wav", sine(300, RATE, 2.0), subtype="PCM_16").read_bytes()
    (tmp_path / "half.wav").write_bytes(data[:len(data) // 2])
    return tmp_path / "half.wav", {}


HEADER_PROBLEMS = {
    "missing": lambda tmp_path: (tmp_path / "gone.wav", {}),
    "empty": empty_file,
    "not_audio": text_file,
    "decode_error": noise_file,
    "truncated": half_wav,
    "header_only": lambda tmp_path: (write(tmp_path / "h.wav", np.zeros(0, np.float32), subtype="PCM_16"), {}),
    "bad_channel": lambda tmp_path: (write(tmp_path / "mono.wav", sine(300, RATE, 0.5)), {"channel": 1}),
}


@pytest.mark.parametrize("reason", sorted(HEADER_PROBLEMS))
def test_header_problems_are_raised_by_open_audio_before_any_block(tmp_path, reason):
    path, kwargs = HEADER_PROBLEMS[reason](tmp_path)
    with pytest.raises(AudioError) as caught:
        open_audio(path, RATE, **kwargs)
    assert caught.value.reason == reason
    assert caught.value.detail == reason_of(path, **kwargs).detail  # load_audio says exactly the same


def test_nan_in_the_middle_of_a_long_file_is_raised_while_iterating_with_its_time(tmp_path):
    samples = sine(300, RATE, 30.0)
    samples[round(12.5 * RATE) + np.array([0, 5, 9])] = [np.nan, np.inf, np.nan]
    stream = open_audio(write(tmp_path / "drop.wav", samples), RATE, block_frames=RATE)
    blocks = []
    with pytest.raises(AudioError) as caught:
        for block in stream:
            blocks.append(block)
    assert caught.value.reason == "non_finite" and len(blocks) == 12 and stream.closed
    assert caught.value.detail == "3 of 4096 samples are NaN or infinite in 12.00 to 13.00 s, the first at 12.50 s"


def test_silence_is_raised_at_the_end_after_every_block(tmp_path):
    stream = open_audio(write(tmp_path / "zeros.wav", np.zeros(3 * RATE, np.float32)), RATE, block_frames=RATE)
    blocks = []
    with pytest.raises(AudioError, match="peak-to-peak amplitude 0 ") as caught:
        for block in stream:
            blocks.append(block)
    assert caught.value.reason == "silent" and len(blocks) == 3 and stream.peak_to_peak == 0.0


def test_too_short_is_raised_at_the_end_with_the_same_detail(tmp_path):
    stream = open_audio(write(tmp_path / "blip.wav", sine(300, RATE, 0.125)), RATE, min_samples=1024,
                        block_frames=100)
    with pytest.raises(AudioError) as caught:
        for _ in stream:
            pass
    assert caught.value.reason == "too_short" and stream.n_samples == 512
    assert caught.value.detail == "0.125 s; need at least 0.25 s (1024 samples at 4096 Hz)"


def test_clipped_is_known_once_the_stream_is_read(tmp_path):
    square = np.where(sine(50, RATE, 4.0) >= 0, 1.0, -1.0).astype(np.float32)
    with open_audio(write(tmp_path / "square.wav", square, subtype="PCM_16"), RATE, block_frames=1000) as stream:
        assert not stream.clipped
        for _ in stream:
            pass
    assert stream.clipped and stream.n_samples == 4 * RATE and stream.peak_to_peak == pytest.approx(2.0, abs=1e-4)


def test_closing_a_half_read_stream_closes_the_file(tmp_path):
    path = write(tmp_path / "tone.wav", sine(300, RATE, 2.0))
    stream = open_audio(path, RATE, block_frames=1000)
    blocks = iter(stream)
    next(blocks)
    assert not stream.closed
    stream.close()
    assert stream.closed
    with open_audio(path, RATE, block_frames=1000) as stream:
        blocks = iter(stream)
        next(blocks)
    assert stream.closed
    stream = open_audio(path, RATE, block_frames=1000)
    next(iter(stream))  # the iterator dropped at once: collecting it closes the file
    assert stream.closed
    stream = open_audio(path, RATE)
    assert sum(block.size for block in stream) == 2 * RATE and stream.closed  # a full read closes it too
    with pytest.raises(RuntimeError, match="read once"):
        iter(stream)


def traced_peak_bytes(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_thirty_minutes_stream_in_bounded_memory(tmp_path):
    path, tone = tmp_path / "half-hour.wav", sine(256, RATE, 16.0)  # 16 s: a whole number of cycles
    with soundfile.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as sound:  # 14.7 MB on disk, 29.5 MB as float32
        for _ in range(30 * 60 // 16):
            sound.write(tone)
        sound.write(tone[:30 * 60 * RATE - sound.frames])
    stream = open_audio(path, RATE)
    streamed_peak = traced_peak_bytes(lambda: sum(1 for _ in stream))
    assert stream.n_samples == 30 * 60 * RATE and not stream.clipped and stream.closed
    assert streamed_peak < 8 * 2**20  # measured 0.9 MB: a 65536-frame block and its temporaries
    assert traced_peak_bytes(lambda: load_audio(path, RATE)) > 29 * 10**6  # tracemalloc does see numpy arrays


def test_mp3_in_small_blocks_decodes_like_one_read(tmp_path):
    """python-soundfile seeks after each read; libsndfile 1.2.2's MP3 decoder does not resume exactly after a seek."""
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    path = tmp_path / "tone.mp3"
    soundfile.write(path, sine(300, 48000, 3.0), 48000, format="MP3")
    one_read = soxr.resample(soundfile.read(path, dtype="float32")[0], 48000, RATE, quality="HQ")
    np.testing.assert_array_equal(stream_all(path, block_frames=1000), one_read)
    np.testing.assert_array_equal(load_audio(path, RATE).samples, one_read)


def test_mp3_cut_short_is_truncated_at_the_end_of_the_stream(tmp_path):
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    whole = tmp_path / "whole.mp3"
    soundfile.write(whole, sine(300, 16000, 4.0), 16000, format="MP3")
    (tmp_path / "cut.mp3").write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    stream = open_audio(tmp_path / "cut.mp3", RATE, block_frames=4096)
    assert stream.info.frames_in == 64000
    with pytest.raises(AudioError, match="header declares 64000 frames but only") as caught:
        for _ in stream:
            pass
    assert caught.value.reason == "truncated" and 0 < stream.frames_read < 64000


# --- read_many ------------------------------------------------------------------------------------------------------

def test_read_many_keeps_input_order_when_early_items_are_slow():
    def load(index):
        time.sleep(0.05 * (6 - index) / 6)  # item 0 is the slowest
        return index * 10
    assert list(read_many(range(6), load, workers=3)) == [(i, i * 10) for i in range(6)]


def test_read_many_turns_audio_errors_into_results_and_carries_on():
    def load(name):
        if name == "silent.wav":
            raise AudioError("silent", name, "peak-to-peak amplitude 0")
        return name.upper()
    results = dict(read_many(["a.wav", "silent.wav", "b.wav"], load, workers=2))
    assert results["a.wav"] == "A.WAV" and results["b.wav"] == "B.WAV"
    assert results["silent.wav"].reason == "silent"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("bug", [KeyError("no such key"), MemoryError(), TypeError("bad operand")])
def test_read_many_stops_on_an_exception_that_is_not_a_decoding_failure(workers, bug):
    """A bug in the decoder must stop the batch naming the file, never become a decode_error skip."""
    def load(name):
        if name == "broken.wav":
            raise bug
        return name.upper()
    with pytest.raises(DecodeBugError, match=f"broken.wav: unexpected {type(bug).__name__}.*this is a bug") as caught:
        list(read_many(["a.wav", "broken.wav", "b.wav"], load, workers=workers))
    assert caught.value.__cause__ is bug and isinstance(caught.value, LeakhunterError)


def test_libsndfile_failures_while_reading_blocks_are_decode_errors(tmp_path, monkeypatch):
    path = write(tmp_path / "a.wav", sine(300, RATE, 0.5))

    def failing_read(self, *args, **kwargs):
        raise soundfile.LibsndfileError(1, "read failed: ")
    monkeypatch.setattr(soundfile.SoundFile, "read", failing_read)
    ((_, result),) = read_many([path], lambda p: load_audio(p, RATE), workers=1)
    assert isinstance(result, AudioError) and result.reason == "decode_error"


def test_an_unreadable_file_is_a_decode_error_not_a_bug(tmp_path, monkeypatch):
    path = write(tmp_path / "a.wav", sine(300, RATE, 0.5))
    real_open = open

    def denied(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr("builtins.open", denied)
    ((_, result),) = read_many([path], lambda p: load_audio(p, RATE), workers=1)
    assert result.reason == "decode_error" and "Permission denied" in result.detail


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


# --- OGG/Vorbis ------------------------------------------------------------------------------------------------------

def _needs_ogg_vorbis():
    if "OGG" not in soundfile.available_formats() or "VORBIS" not in soundfile.available_subtypes("OGG"):
        pytest.skip(f"this libsndfile ({soundfile.__libsndfile_version__}) has no OGG/Vorbis support")


def test_ogg_vorbis_decodes_at_the_model_rate_close_to_its_source(tmp_path):
    _needs_ogg_vorbis()
    rate_in, seconds = 8000, 3.0
    t = np.arange(int(rate_in * seconds)) / rate_in
    source = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1100 * t)).astype(np.float32)
    path = tmp_path / "tone.ogg"
    soundfile.write(path, source, rate_in, format="OGG", subtype="VORBIS")
    audio = load_audio(path, RATE)
    assert audio.sample_rate_in == rate_in and audio.channels_in == 1 and audio.resampled
    assert audio.duration_s == pytest.approx(seconds, abs=0.01)
    assert abs(audio.samples.size - seconds * RATE) <= 1
    reference = soxr.resample(source, rate_in, RATE, quality="HQ")
    n = min(reference.size, audio.samples.size)
    # lossy: not sample-exact, but the same waveform (Vorbis keeps these tones nearly untouched)
    assert np.corrcoef(audio.samples[:n], reference[:n])[0, 1] > 0.95
    spectrum, expected = (np.abs(np.fft.rfft(x[:n])) for x in (audio.samples, reference))
    assert np.argsort(spectrum)[-2:].tolist() == np.argsort(expected)[-2:].tolist()


def test_an_ogg_name_holding_wav_bytes_is_a_format_mismatch(tmp_path):
    _needs_ogg_vorbis()
    path = tmp_path / "renamed.ogg"
    soundfile.write(path, sine(300, RATE, 0.5), RATE, format="WAV", subtype="PCM_16")
    assert reason_of(path).reason == "format_mismatch"


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
