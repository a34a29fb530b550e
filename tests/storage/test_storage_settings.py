"""Settings: defaults, geolabel.toml, GEOLABEL_* env overrides, and secrets that never show."""

from __future__ import annotations

import pickle

import pytest

from storage.settings import SecretStr, Settings, SettingsError


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.load(env={})
    assert s.data_dir == (tmp_path / ".geolabel").resolve()
    assert s.database_url == f"sqlite:///{(tmp_path / '.geolabel' / 'geolabel.db').as_posix()}"
    assert s.blob_url == (tmp_path / ".geolabel" / "blobs").as_uri()
    assert s.label_studio_token_env == "LABEL_STUDIO_USER_TOKEN"
    assert s.source == "defaults"


def test_toml_then_env_then_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "geolabel.toml").write_text(
        '[geolabel]\ndata_dir = "store"\nlabel_studio_url = "http://ls.example:8080"\n'
        'blob_url = "s3://bucket/prefix"\nimagery_roots = ["/data/a", "/data/b"]\n'
    )
    s = Settings.load(env={})
    assert s.data_dir == (tmp_path / "store").resolve()  # relative to the file
    assert s.label_studio_url == "http://ls.example:8080"
    assert s.blob_url == "s3://bucket/prefix"
    assert [str(p) for p in s.imagery_roots] == ["/data/a", "/data/b"]
    assert s.source == "geolabel.toml"
    env = {"GEOLABEL_DATA_DIR": str(tmp_path / "envdir"), "GEOLABEL_IMAGERY_ROOTS": "/x:/y"}
    s = Settings.load(env=env)
    assert s.data_dir == (tmp_path / "envdir").resolve() and s.source == "geolabel.toml+env"
    assert s.database_url.endswith("/envdir/geolabel.db")
    assert [str(p) for p in s.imagery_roots] == ["/x", "/y"]
    assert Settings.load(env=env, label_studio_url="https://other").label_studio_url == "https://other"
    other = tmp_path / "other.toml"
    other.write_text('database_url = "postgresql://u@h/db"\n')
    assert Settings.load(env={"GEOLABEL_CONFIG": str(other)}).database_url == "postgresql://u@h/db"


def test_secrets_never_shown(tmp_path):
    env = {
        "GEOLABEL_DATABASE_URL": "postgresql://admin:hunter2pw@db.example/geo",
        "LABEL_STUDIO_USER_TOKEN": "tok-abcdef123456",
    }
    s = Settings.load(env=env, data_dir=str(tmp_path))
    for text in (repr(s), str(s), str(s.describe())):
        assert "hunter2pw" not in text and "tok-abcdef123456" not in text
        assert "admin:***@db.example" in text
    assert s.describe()["label_studio_token_set"] is False  # describe() reads the real environment
    token = s.label_studio_token(env)
    assert isinstance(token, SecretStr) and token.get_secret_value() == "tok-abcdef123456"
    assert "tok" not in repr(token) and "tok" not in str(token) and "tok" not in f"{token}"
    assert s.label_studio_token({}) is None
    with pytest.raises(TypeError):
        pickle.dumps(token)
    assert s.database_url.endswith("hunter2pw@db.example/geo")  # the value itself is intact for use


@pytest.mark.parametrize(
    "text, message",
    [
        ("data_dir = [1, 2", "cannot read"),
        ('nonsense = "x"', "unknown settings"),
        ('label_studio_token = "abc"', "do not put secrets"),
        ('label_studio_url = "ftp://x"', "http"),
        ('label_studio_token_env = "tok-abc!"', "NAME of an environment variable"),
    ],
)
def test_bad_files(tmp_path, text, message):
    f = tmp_path / "g.toml"
    f.write_text(text)
    with pytest.raises(SettingsError, match=message):
        Settings.load(f, env={})


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="not a file"):
        Settings.load(env={"GEOLABEL_CONFIG": str(tmp_path / "nope.toml")})
    with pytest.raises(SettingsError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml", env={})
    with pytest.raises(SettingsError, match="unknown settings"):
        Settings.load(env={}, colour="blue")
