"""export.push_to_hub: the upload's failure branches say what to do, never print the token, and say the
local export is complete. The Hub itself is intercepted (no network here)."""
import httpx2 as httpx  # the HTTP client huggingface_hub 2.x is built on (its errors wrap its responses)
import huggingface_hub
import pytest
from huggingface_hub.errors import HfHubHTTPError

from smooth_then_quant import SmoothQuantError
from smooth_then_quant.export.hub import push_folder



def _http_error(status: int) -> HfHubHTTPError:
    response = httpx.Response(status, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
    return HfHubHTTPError(f"{status} error", response=response)


@pytest.mark.parametrize("status,hint", [(401, "hf auth login"), (403, "HF_TOKEN"), (500, "(500)")])
def test_http_errors_name_the_status_and_the_fix(tmp_path, monkeypatch, status, hint):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_never_printed")

    def create_repo(self, *a, **k):
        raise _http_error(status)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    with pytest.raises(SmoothQuantError) as e:
        push_folder(tmp_path, "user/model")
    msg = str(e.value)
    assert hint in msg and "user/model" in msg and "local export is complete" in msg
    assert "hf_secret" not in msg
    assert ("hf auth login" in msg) == (status in (401, 403))  # the login hint only where it is the fix


def test_network_failures_name_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: "https://hf.co/user/model")

    def upload_folder(self, *a, **k):
        raise httpx.ConnectError("name resolution failed")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    with pytest.raises(SmoothQuantError, match="ConnectError. Check the network") as e:
        push_folder(tmp_path, "user/model")
    assert "local export is complete" in str(e.value)


def test_a_successful_push_returns_the_repo_url(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **k: seen.update(create=(repo_id, k["private"])) or
                        f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **k: seen.update(upload=k))
    assert push_folder(tmp_path, "user/model", private=True) == "https://huggingface.co/user/model"
    assert seen["create"] == ("user/model", True) and seen["upload"]["folder_path"] == str(tmp_path)
