"""The lake on ADLS, against Azurite: the lake API and each credential form the emulator can check."""

from __future__ import annotations

import gzip
import threading

import polars as pl
import pytest

from many_models_platform.core.spec import CsvSpec
from many_models_platform.storage.lake import Lake, adlfs_options
from many_models_platform.storage.redaction import redact
from many_models_platform.storage.settings import PlatformSettings

AZURE_VARS = (
    "MMP_LAKE_URL",
    "MMP_LAKE_BLOB_ENDPOINT",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
)


def lake_from_env(monkeypatch, tmp_path, **env) -> tuple[PlatformSettings, Lake]:
    for var in AZURE_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = PlatformSettings.from_env(tmp_path / "home")
    return settings, Lake(settings.lake_url, settings.lake_storage_options)


def test_lake_api_on_azurite(azurite_lake):
    lake = Lake(azurite_lake.url, {"connection_string": azurite_lake.connection_string})
    assert not lake.is_local
    frame = pl.DataFrame({"key": ["a", "b"], "y": [1.0, 2.0]})
    path = lake.path("bronze", "uc", "a.parquet")
    lake.write_parquet(path, frame)
    assert lake.read_parquet(path).equals(frame)
    lake.write_json(lake.path("state", "uc", "x.json"), {"n": 1})
    assert lake.read_json(lake.path("state", "uc", "x.json")) == {"n": 1}
    for i in range(3):
        lake.write_bytes(lake.path("landing", "uc", f"part-{i}.csv"), f"key,y\nk{i},{i}\n".encode())
    listed = lake.listing("landing/uc/*.csv")
    assert [f.name for f in listed] == [f"landing/uc/part-{i}.csv" for i in range(3)]
    assert all(f.size == len(b"key,y\nk0,0\n") and f.modified for f in listed)
    assert [lake.relative(p) for p in lake.glob("landing/uc/*.csv")] == [f.name for f in listed]
    assert lake.read_table(lake.glob("landing/uc/*.csv")[1], "csv", columns=["key"])["key"].to_list() == ["k1"]
    # an overwrite changes the file's stamp (its ETag), which is how the landing sensor sees it
    first = lake.signature(lake.path("landing", "uc", "part-0.csv"))
    assert first == listed[0].signature
    lake.write_bytes(lake.path("landing", "uc", "part-0.csv"), b"key,y\nk0,0\n")
    assert lake.signature(lake.path("landing", "uc", "part-0.csv"))["modified"] != first["modified"]
    lake.delete(lake.path("landing", "uc", "part-2.csv"))
    lake.delete(lake.path("landing", "uc", "part-2.csv"))  # missing is fine
    assert not lake.exists(lake.path("landing", "uc", "part-2.csv"))
    assert len(lake.listing("landing/uc/*.csv")) == 2


def test_parquet_key_columns_are_read_with_ranged_requests(azurite_lake, monkeypatch):
    """The landing sensor's read of a Parquet file's key columns fetches its footer and the key
    column chunks, not the object: counted at the filesystem's one download call."""
    import numpy as np

    lake = Lake(azurite_lake.url, {"connection_string": azurite_lake.connection_string})
    rng = np.random.default_rng(0)
    n = 100_000
    frame = pl.DataFrame(
        {"store": [f"s{i % 7}" for i in range(n)], "noise": rng.normal(size=n), "y": rng.normal(size=n)}
    )
    path = lake.path("landing", "uc", "big.parquet")
    lake.write_parquet(path, frame)
    (listed,) = lake.listing("landing/uc/*.parquet")
    fs = path.fs
    fetched: list[int] = []
    download = fs.cat_file
    monkeypatch.setattr(fs, "cat_file", lambda *a, **kw: fetched.append(len(data := download(*a, **kw))) or data)
    keys = lake.read_table(path, "parquet", columns=["store", "missing"], text_columns=["store"], size=listed.size)
    assert keys.columns == ["store"] and keys["store"].to_list() == frame["store"].to_list()
    assert listed.size > 1_000_000 and 0 < sum(fetched) < listed.size // 10, (fetched, listed.size)
    whole = lake.read_table(path, "parquet")  # every column: all of it, same values as a local read
    assert whole.equals(frame)


def test_overwrites_are_atomic_per_object(azurite_lake):
    """A reader racing a writer sees the whole old object or the whole new one, never a mix."""
    lake = Lake(azurite_lake.url, {"connection_string": azurite_lake.connection_string})
    path = lake.path("state", "uc", "big.bin")
    versions = [bytes([i]) * (3 * 1024 * 1024 + 17) for i in range(2)]  # above adlfs's block size
    lake.write_bytes(path, versions[0])
    seen: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(path.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(6):
            lake.write_bytes(path, versions[i % 2])
    finally:
        done.set()
        reader.join()
    assert seen and all(data in versions for data in seen)


@pytest.mark.parametrize("form", ["connection_string", "account_key", "sas_token"])
def test_credential_forms_from_the_environment(azurite_lake, monkeypatch, tmp_path, form):
    server = azurite_lake.server
    env = {"MMP_LAKE_URL": azurite_lake.url}
    secret = {"connection_string": server.account_key, "account_key": server.account_key}.get(form)
    if form == "connection_string":
        env["AZURE_STORAGE_CONNECTION_STRING"] = server.connection_string
    elif form == "account_key":
        env |= {"MMP_LAKE_BLOB_ENDPOINT": server.blob_endpoint, "AZURE_STORAGE_ACCOUNT_KEY": server.account_key}
        env["AZURE_STORAGE_ACCOUNT_NAME"] = server.account
    else:
        secret = server.sas_token()
        env |= {"MMP_LAKE_BLOB_ENDPOINT": server.blob_endpoint, "AZURE_STORAGE_SAS_TOKEN": secret}
    settings, lake = lake_from_env(monkeypatch, tmp_path, **env)
    lake.write_bytes(lake.path("landing", "uc", "a.csv"), b"key\nx\n")
    assert [f.name for f in lake.listing("landing/uc/*.csv")] == ["landing/uc/a.csv"]
    assert lake.read_table(lake.path("landing", "uc", "a.csv"), "csv")["key"].to_list() == ["x"]
    # the credential is a secret of the settings: masked wherever it shows up
    assert secret in settings.secrets()
    shown = redact(f"cannot reach {settings.lake_storage_options}", settings.secrets())
    assert secret not in shown and server.account in shown


def test_a_wrong_key_is_refused_and_never_shown(azurite_lake, monkeypatch, tmp_path):
    """Azurite checks shared-key signatures: the credential really is what grants access."""
    server = azurite_lake.server
    wrong = server.account_key[:-8] + "AAAAAAA="
    settings, lake = lake_from_env(
        monkeypatch,
        tmp_path,
        MMP_LAKE_URL=azurite_lake.url,
        MMP_LAKE_BLOB_ENDPOINT=server.blob_endpoint,
        AZURE_STORAGE_ACCOUNT_NAME=server.account,
        AZURE_STORAGE_ACCOUNT_KEY=wrong,
    )
    with pytest.raises(Exception) as err:
        lake.write_bytes(lake.path("landing", "uc", "a.csv"), b"key\nx\n")
    assert wrong not in redact(str(err.value), settings.secrets())


def test_without_a_key_the_lake_uses_default_azure_credential():
    """No key, SAS or connection string: adlfs gets ``anon=False`` and builds DefaultAzureCredential
    (managed identity in production); nothing is contacted until the first request."""
    from azure.identity.aio import DefaultAzureCredential

    options = adlfs_options({"account_name": "mmpprod"})
    assert options == {"account_name": "mmpprod", "anon": False}
    fs = Lake("abfs://lake/root", {"account_name": "mmpprod"}).root.fs
    assert isinstance(fs.credential, DefaultAzureCredential)
    assert fs.account_url == "https://mmpprod.blob.core.windows.net"
    # a custom https endpoint (private link, sovereign cloud) keeps the token credential
    assert adlfs_options({"account_name": "a", "blob_endpoint": "https://a.blob.core.chinacloudapi.cn"}) == {
        "account_name": "a",
        "account_host": "a.blob.core.chinacloudapi.cn",
        "anon": False,
    }


def test_a_large_landing_file_opens_as_a_local_copy_read_in_batches(azurite_lake, tmp_path):
    """``open_table`` (raw's way with a file too large to hold) downloads the object, decodes a
    gzipped cp1252 CSV, and reads the same columns, names and types as ``read_table``; the
    local copies are gone afterwards."""
    lake = Lake(azurite_lake.url, {"connection_string": azurite_lake.connection_string})
    text = "Store;day;sales\n0012;2024-01-01;3,5\nMünchen;2024-01-02;4\n0012;2024-01-03;5\n"
    csv_spec = CsvSpec(encoding="cp1252", decimal_comma=True)
    lake.write_bytes(lake.path("landing", "uc", "a.csv.gz"), gzip.compress(text.encode("cp1252")))
    frame = pl.DataFrame({"store": ["b", "a", "c"], "day": [1, 2, 3]})
    lake.write_parquet(lake.path("landing", "uc", "b.parquet"), frame)
    columns, scratch = ["store", "day", "sales"], tmp_path / "scratch"
    for name, fmt in (("a.csv.gz", "csv"), ("b.parquet", "parquet")):
        path = lake.path("landing", "uc", name)
        whole = lake.read_table(path, fmt, columns, ["store", "day"], csv=csv_spec)
        with lake.open_table(path, fmt, columns, ["store", "day"], scratch, csv=csv_spec) as table:
            batches = list(table.batches(2))
            assert len(list(scratch.iterdir())) == (2 if fmt == "csv" else 1)  # the download, and its decoding
        assert pl.concat(batches).equals(whole) and whole.height == 3
        assert not list(scratch.iterdir())
    assert whole.equals(frame) and pl.concat(batches).schema == frame.schema
    assert lake.read_table(lake.path("landing", "uc", "a.csv.gz"), "csv", columns, ["store", "day"], csv=csv_spec)[
        "store"
    ].to_list() == ["0012", "München", "0012"]
