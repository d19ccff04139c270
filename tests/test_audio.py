import errno
import os
import threading

import pytest
import torch

from fastar import audio, data


def test_mu_law_round_trips_every_value_and_follows_the_curve():
    q = torch.arange(256)
    assert torch.equal(audio.mu_law_encode(audio.mu_law_decode(q)), q)
    x = torch.tensor([-1.0, -0.5, 0.0, 0.01, 0.5, 1.0, 7.0])
    expected = torch.sign(x.clamp(-1, 1)) * torch.log1p(255 * x.clamp(-1, 1).abs()) / torch.log1p(
        torch.tensor(255.0))
    torch.testing.assert_close(audio.mu_law_encode(x), torch.round((expected + 1) * 127.5).long())
    assert audio.mu_law_encode(torch.tensor([0.0])).item() in (127, 128)  # silence in the middle
    assert torch.equal(audio.mu_law_encode(torch.tensor([-2.0, 2.0])), torch.tensor([0, 255]))


def test_wav_round_trip(tmp_path):
    x = torch.sin(torch.arange(800) / 10.0) * 0.7
    audio.write_wav(str(tmp_path / "a.wav"), x, 8000)
    y, rate = audio.read_wav(str(tmp_path / "a.wav"))
    assert rate == 8000 and y.shape == (1, 800)
    torch.testing.assert_close(y[0], x, atol=0.5 / 32768, rtol=0)
    with pytest.raises(ValueError, match=r"expected samples \(T,\) or \(channels, T\)"):
        audio.write_wav(str(tmp_path / "b.wav"), torch.zeros(1, 2, 3))


def _fake_package(root, lengths):
    """WAV files in the packages' layout (nested folders, 8 kHz 16-bit mono)."""
    for i, n in enumerate(lengths):
        folder = root / ("digits" if i % 2 else "letters")
        folder.mkdir(parents=True, exist_ok=True)
        audio.write_wav(str(folder / ("%02d.wav" % i)), torch.full((n,), (i - 10) / 20.0), 8000)


@pytest.mark.parametrize("name,env", [("speech", "FASTAR_SPEECH_DIR"),
                                      ("music", "FASTAR_MUSIC_DIR")])
def test_audio_sets_split_by_file_into_mu_law_clips(tmp_path, monkeypatch, name, env):
    L = data.CLIP_LENGTH
    _fake_package(tmp_path, [L * 2 + 5] * 20 + [L // 2])  # the last file is too short
    monkeypatch.setenv(env, str(tmp_path))
    entry = data.get(name)
    assert (entry.modality, entry.shape, entry.num_values) == ("audio", (1, L), 256)
    sizes = {}
    for split in data.SPLITS:
        x, y = data.load(name, split)
        assert y is None and x.dtype == torch.uint8 and x.shape[1:] == (1, L)
        sizes[split] = len(x)
    # 21 files sorted by path, counted from the last: 0, 10, 20 test, 1, 11 valid; the last
    # file (letters/20.wav) is too short for a clip; the others give 2 clips each.
    files = sorted(tmp_path.glob("**/*.wav"))
    assert files[-1].name == "20.wav"
    assert sizes == {"train": 2 * 16, "valid": 4, "test": 4}
    x, _ = data.load(name, "valid")
    first, _ = audio.read_wav(str(files[-12]))
    assert torch.equal(x[0, 0].long(), audio.mu_law_encode(first[0, :L]))
    monkeypatch.setenv(env, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="apt-get install asterisk-"):
        data.load(name, "train")


def test_mu_law_and_wav_refuse_what_has_no_value():
    with pytest.raises(ValueError, match=r"mu_law_encode: expected samples in \[-1, 1\], got NaN"):
        audio.mu_law_encode(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match=r"expected integer values in \[0, 256\), got values in "
                                         r"\[-1, 256\]"):
        audio.mu_law_decode(torch.tensor([-1, 3, 256]))
    with pytest.raises(ValueError, match="got dtype torch.float32"):
        audio.mu_law_decode(torch.tensor([0.5]))
    for fn in (audio.mu_law_encode, audio.mu_law_decode):
        with pytest.raises(ValueError, match="expected an int num_values >= 2, got 1"):
            fn(torch.zeros(2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"write_wav: expected samples in \[-1, 1\], got NaN"):
        audio.write_wav("unused.wav", torch.tensor([0.0, float("nan")]))
    for rate in (0, 8000.7, True):
        with pytest.raises(ValueError, match="expected an int rate >= 1"):
            audio.write_wav("unused.wav", torch.zeros(3), rate)


@pytest.mark.parametrize("name,env", [("speech", "FASTAR_SPEECH_DIR")])
def test_unusable_audio_files_and_empty_splits_are_named(tmp_path, monkeypatch, name, env):
    L = data.CLIP_LENGTH
    monkeypatch.setenv(env, str(tmp_path))
    _fake_package(tmp_path, [L * 2])  # one file: train and valid get none
    assert len(data.load(name, "test")[0]) == 2
    (tmp_path / "letters" / "00.wav").rename(tmp_path / "letters" / "00.WAV")
    assert len(data.load(name, "test")[0]) == 2  # .WAV counts too
    (tmp_path / "letters" / "00.WAV").rename(tmp_path / "letters" / "00.wav")
    with pytest.raises(data.DataError, match=r"the valid split of the 1 WAV files under .* has "
                                             r"no clip of 4096 samples"):
        data.load(name, "valid")
    _fake_package(tmp_path, [L * 2] * 3)
    audio.write_wav(str(tmp_path / "digits" / "01.wav"), torch.zeros(L), 16000)  # test's
    with pytest.raises(data.DataError, match=r"01\.wav is sampled at 16000 Hz; expected 8000"):
        data.load(name, "test")  # every file's rate is checked, not only the split's
    (tmp_path / "digits" / "01.wav").write_bytes(b"RIFF")  # damaged: the train split's file
    with pytest.raises(data.DataError, match=r"cannot read .*01\.wav as a PCM WAV file"):
        data.load(name, "train")
    from fastar import cli
    with pytest.raises(SystemExit, match=r"python -m fastar train: fastar.data: cannot read"):
        cli.main(["train", "wavenet", "--dataset", name, "--out", str(tmp_path / "run")])


def test_a_file_reached_by_two_paths_or_copied_lands_in_one_split(tmp_path, monkeypatch):
    """Debian's sounds folder holds en and en_US as links to one folder: pointed at their
    parent, the data set must still see each file once."""
    L = data.CLIP_LENGTH
    plain, linked = tmp_path / "plain", tmp_path / "sounds"
    _fake_package(plain, [L * 2] * 12)
    _fake_package(linked / "en_US_f_Allison", [L * 2] * 12)
    for name in ("en", "en_US"):
        os.symlink(linked / "en_US_f_Allison", linked / name)
    copy = linked / "zz-copy.wav"  # byte-identical to a file under another name
    copy.write_bytes((linked / "en_US_f_Allison" / "digits" / "01.wav").read_bytes())
    # the same samples behind a header with one more chunk (a LIST/INFO a tagger adds)
    raw = (linked / "en_US_f_Allison" / "letters" / "02.wav").read_bytes()
    at = raw.index(b"data")
    tagged = raw[:at] + b"LIST" + (4).to_bytes(4, "little") + b"INFO" + raw[at:]
    tagged = tagged[:4] + (len(tagged) - 8).to_bytes(4, "little") + tagged[8:]
    (linked / "zz-tagged.wav").write_bytes(tagged)
    # and in stereo: the data set mixes it down to the same mono clip
    mono = audio.read_wav(str(linked / "en_US_f_Allison" / "letters" / "04.wav"))[0][0]
    audio.write_wav(str(linked / "zz-stereo.wav"), torch.stack([mono, mono]), 8000)
    assert torch.equal(audio.read_wav(str(linked / "zz-tagged.wav"))[0],
                       audio.read_wav(str(linked / "en_US_f_Allison" / "letters" / "02.wav"))[0])
    splits = {}
    for root in (plain, linked):
        monkeypatch.setenv("FASTAR_SPEECH_DIR", str(root))
        splits[root] = {split: data.load("speech", split)[0] for split in data.SPLITS}
    assert {k: len(v) for k, v in splits[linked].items()} == {
        k: len(v) for k, v in splits[plain].items()}
    clips = {split: {bytes(c.numpy()) for c in x} for split, x in splits[linked].items()}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not clips[a] & clips[b], "a clip in both %s and %s" % (a, b)


def test_a_damaged_chunk_id_is_named(tmp_path, monkeypatch):
    L = data.CLIP_LENGTH
    _fake_package(tmp_path, [L * 2] * 3)
    path = tmp_path / "letters" / "00.wav"
    path.write_bytes(path.read_bytes().replace(b"data", b"dXta"))
    with pytest.raises(ValueError, match=r"^cannot read .*00\.wav as a PCM WAV file"):
        audio.read_wav(str(path))
    monkeypatch.setenv("FASTAR_SPEECH_DIR", str(tmp_path))
    for split in data.SPLITS:  # whichever split the damaged file is in
        with pytest.raises(data.DataError, match=r"^fastar.data: cannot read .*00\.wav as a PCM "
                                                 r"WAV file: \S"):
            data.load("speech", split)
    torn = tmp_path / "torn.wav"  # cut by one byte: the torn last frame is dropped
    audio.write_wav(str(torn), torch.full((10,), 0.5))
    torn.write_bytes(torn.read_bytes()[:-1])
    assert audio.read_wav(str(torn))[0].shape == (1, 9)


def test_audio_folders_linked_in_a_loop_are_walked_once(tmp_path, monkeypatch):
    _fake_package(tmp_path / "a", [data.CLIP_LENGTH * 2] * 3)
    os.symlink(tmp_path / "a", tmp_path / "a" / "letters" / "up")  # a -> letters -> a
    os.symlink(tmp_path, tmp_path / "a" / "digits" / "root")
    monkeypatch.setenv("FASTAR_SPEECH_DIR", str(tmp_path))
    assert len(data.load("speech", "train")[0]) == 2


def test_write_wav_checks_everything_before_touching_the_file(tmp_path):
    path = tmp_path / "kept.wav"
    audio.write_wav(str(path), torch.zeros(100))
    before = path.read_bytes()
    for samples, rate, message in (
            (torch.rand(8000, 1) - 0.5, 8000, r"channels <= min\(T, 32767\), got shape "
                                              r"\(8000, 1\) \(for \(T, channels\) data pass "
                                              r"samples.T\)"),
            (torch.zeros(0, 5), 8000, "got shape \\(0, 5\\)"),
            (torch.zeros(100), 2 ** 31, r"must fit WAV's 32-bit byte rate"),
            (torch.tensor([0.0, float("nan")]), 8000, "got NaN")):
        with pytest.raises(ValueError, match=message):
            audio.write_wav(str(path), samples, rate)
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.wav"]


def test_a_full_disk_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    from fastar import checkpoint
    from fastar.models import MADE

    model = MADE(image_shape=(1, 2, 2), hidden_sizes=(4,))
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(model, str(path))
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    for save in (lambda: checkpoint.save(model, str(path)),
                 lambda: audio.write_wav(str(path), torch.zeros(10))):
        with pytest.raises(OSError, match=r"^\[Errno 28\] fastar: cannot write .*checkpoint\.pt: "
                                          r"No space left on device$"):
            save()
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_threads_writing_one_file_never_tear_it(tmp_path):
    path = str(tmp_path / "shared.wav")
    audio.write_wav(path, torch.zeros(4000))
    errors = []

    def write(value):
        try:
            for _ in range(40):
                audio.write_wav(path, torch.full((4000,), value))
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            errors.append(e)

    def read():
        try:
            for _ in range(80):
                samples, _ = audio.read_wav(path)
                assert samples.shape == (1, 4000) and len(set(samples[0].tolist())) == 1
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(v,)) for v in (0.25, -0.5)]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.wav"]


def test_integer_and_complex_samples_are_refused_not_cast():
    for x in (torch.tensor([1000, -1000, 5], dtype=torch.int16), torch.tensor([1, 0, 1]),
              torch.tensor([True, False]), torch.tensor([0.5 + 1j])):
        with pytest.raises(ValueError, match=r"write_wav: expected a float tensor of samples"):
            audio.write_wav("unused.wav", x)
        with pytest.raises(ValueError, match=r"mu_law_encode: expected a float tensor"):
            audio.mu_law_encode(x)
