"""Audio readers: wav decoding, resampling, both folder layouts, the FSDD split, and skipping broken files."""

from pathlib import Path

import numpy as np
import pytest
import torch

from seqbackbone.data import list_audio_folder, load_audio_files, read_audio, split_audio_files

sf = pytest.importorskip("soundfile")


def write_wav(path: Path, wave: np.ndarray, rate: int = 8000, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, rate, subtype=subtype)


def tone(n: int, freq: float = 440.0, rate: int = 8000, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def test_read_audio_values_and_stereo_mix(tmp_path):
    rng = np.random.default_rng(0)
    mono = rng.uniform(-0.9, 0.9, 500).astype(np.float32)
    write_wav(tmp_path / "m.wav", mono, subtype="FLOAT")
    wave, rate = read_audio(tmp_path / "m.wav")
    assert rate == 8000 and wave.dtype == torch.float32 and wave.shape == (500,)
    torch.testing.assert_close(wave, torch.from_numpy(mono))
    stereo = rng.uniform(-0.9, 0.9, (300, 2)).astype(np.float32)
    write_wav(tmp_path / "s.wav", stereo, subtype="FLOAT")
    wave, _ = read_audio(tmp_path / "s.wav")
    torch.testing.assert_close(wave, torch.from_numpy(stereo.mean(1)))


def test_read_audio_resamples_to_the_asked_rate(tmp_path):
    write_wav(tmp_path / "a.wav", tone(8000, 200.0), rate=8000, subtype="FLOAT")
    wave, rate = read_audio(tmp_path / "a.wav", sample_rate=16000)
    assert rate == 16000 and abs(wave.shape[0] - 16000) <= 1
    # Still a 200 Hz tone: the spectrum peaks at 200 Hz of a 16 kHz signal.
    spec = torch.fft.rfft(wave[2000:14000]).abs()
    assert abs(int(spec.argmax()) * 16000 / 12000 - 200.0) < 3


def test_broken_and_empty_files_are_skipped_and_counted(tmp_path, capsys):
    write_wav(tmp_path / "0_ann_0.wav", tone(400))
    write_wav(tmp_path / "1_ann_0.wav", tone(300))
    (tmp_path / "2_ann_0.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(40))  # corrupt
    write_wav(tmp_path / "3_ann_0.wav", np.zeros(0, np.float32))  # no samples
    files = list_audio_folder(tmp_path)
    assert [f.label for f in files] == ["0", "1", "2", "3"]
    audio = load_audio_files(files)
    assert audio.labels == ["0", "1"] and [len(w) for w in audio.waves] == [400, 300]
    assert len(audio.skipped) == 2
    err = capsys.readouterr().err
    assert "skipped 2 of 4 audio files" in err


def test_no_readable_file_raises(tmp_path):
    (tmp_path / "0_ann_0.wav").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="none of the 1 audio files"):
        load_audio_files(list_audio_folder(tmp_path), quiet=True)


def test_fsdd_names_and_official_split(tmp_path):
    for label in ("3", "7"):
        for index in (0, 4, 5, 12):
            write_wav(tmp_path / f"{label}_theo_{index}.wav", tone(100))
    files = list_audio_folder(tmp_path)
    assert {(f.label, f.speaker) for f in files} == {("3", "theo"), ("7", "theo")}
    train, test = split_audio_files(tmp_path)
    assert sorted(f.index for f in test) == [0, 0, 4, 4]
    assert sorted(f.index for f in train) == [5, 5, 12, 12]


def test_label_folders_and_train_test_folders(tmp_path):
    for split in ("train", "test"):
        for label in ("yes", "no"):
            write_wav(tmp_path / split / label / f"{split}{label}.wav", tone(50))
    train, test = split_audio_files(tmp_path)
    assert sorted(f.label for f in train) == ["no", "yes"] and len(test) == 2
    other = tmp_path / "flat_labels"
    for i in range(40):
        write_wav(other / ("a" if i % 2 else "b") / f"rec{i}.wav", tone(20))
    train, test = split_audio_files(other, test_fraction=0.25)
    assert len(train) + len(test) == 40 and 0 < len(test) < 20
    assert not {f.path for f in train} & {f.path for f in test}


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list_audio_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        list_audio_folder(tmp_path / "empty")
    write_wav(tmp_path / "bad" / "recording.wav", tone(10))
    with pytest.raises(ValueError, match="label"):
        list_audio_folder(tmp_path / "bad")
