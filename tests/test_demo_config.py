"""The demo's config file, as the benchmarks write it: a scale-set pool beside the webhook pool."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from agent.config import PoolSource, Scope, load_config
from agent.demo import write_demo_config


def test_a_scale_set_pool_beside_the_webhook_pool(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = write_demo_config(
        tmp_path,
        api_url="http://127.0.0.1:1",
        key=key,
        webhook_secret="s3cret",
        instance="demo-test",
        scale_set_pool="scaleset",
    )
    config = load_config(path)
    webhook, scale_set = config.pools
    assert (webhook.name, webhook.source) == ("default", PoolSource.WEBHOOK)
    assert (scale_set.name, scale_set.source, scale_set.scope) == (
        "scaleset",
        PoolSource.SCALE_SET,
        Scope.ORGANIZATION,
    )
    assert scale_set.labels == ("scaleset",)  # not covering the webhook pool's jobs
    assert (scale_set.scale_set_name, scale_set.scale_set_target) == ("scaleset", "octo-org")
