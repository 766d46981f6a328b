"""Credentials are masked in anything shown to a person."""

import pytest

from many_models_platform.storage.redaction import MASK, redact

PLANTED = "S3cr3t;Pa55=w0rd"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql+psycopg2://mmp:S3cretPw@db.internal:5432/registry", "S3cretPw"),
        ("error: could not connect to mssql+pyodbc://bi:hunter22@sql/mmp?driver=x", "hunter22"),
        ("Driver={ODBC 18};Server=tcp:x;Uid=bi;Pwd={a;b}}c};Encrypt=yes", "a;b}}c"),
        ("Server=x;Database=y;Password=plainpw;", "plainpw"),
        ("mssql+pyodbc:///?odbc_connect=Server%3Dx%3BUid%3Dbi%3BPwd%3Denc0ded%3BDatabase%3Dd", "enc0ded"),
        (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNO+w==;BlobEndpoint=x",
            "Eby8vdM02xNO+w==",
        ),
        ("https://acct.blob.core.windows.net/c?sv=2022&sig=AbC%2Fdef123&se=2030", "AbC%2Fdef123"),
    ],
)
def test_secrets_are_masked(text, secret):
    out = redact(text)
    assert secret not in out
    assert MASK in out


def test_what_is_not_secret_stays_readable():
    out = redact("postgresql+psycopg2://mmp:pw@db.internal:5432/registry")
    assert out == f"postgresql+psycopg2://mmp:{MASK}@db.internal:5432/registry"
    for plain in ("sqlite:////home/u/.mmp/mlflow/candidate.db", "duckdb:///tmp/w.duckdb", "abfs://lake@acct/x"):
        assert redact(plain) == plain


def test_named_and_environment_secrets(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "k3y-from-env")
    assert "k3y-from-env" not in redact("failed with key k3y-from-env")
    assert PLANTED not in redact(f"token was {PLANTED}", secrets=[PLANTED])
