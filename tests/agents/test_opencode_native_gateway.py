"""The real opencode, with no provider of Sesame's, sends its own Anthropic or OpenAI key's requests to the gateway.

Its built-in provider's `options.baseURL` (what OpencodeAgent.through_gateway writes) points at a credential
gateway on host loopback, whose upstream here is the vendor's fake instead of the vendor: opencode holds
only the placeholder, the fake receives the real key where that vendor's API carries it.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable

import pytest
from yarl import URL

from runner.agents import get_agent
from runner.agents.install import agent_bin_dir
from runner.agents.opencode import OpencodeAgent
from runner.sandbox.gateway import CredentialGateway
from tests.agents.real_cli import BASE_PATH, agent_workspace, agents_data_dir, run_cli
from tests.support import fake_anthropic
from tests.support.fake_openai import FakeOpenAI
from tests.support.loopback import LoopbackFake, RecordedRequest

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
KEY = "sk-real-native-0123456789"


def anthropic_fake() -> LoopbackFake:
    return fake_anthropic.FakeAnthropic([fake_anthropic.say("Hello from the fake.")], api_key=KEY)


def openai_fake() -> LoopbackFake:
    return FakeOpenAI(["Hello from the fake."], api_key=KEY, default="Hello from the fake.")


@pytest.mark.parametrize(("variable", "fake_of", "model", "key_of"), [
    ("ANTHROPIC_API_KEY", anthropic_fake, "anthropic/claude-sonnet-4-5", lambda r: r.headers.get("x-api-key")),
    ("OPENAI_API_KEY", openai_fake, "openai/gpt-5",
     lambda r: r.headers.get("Authorization", "").removeprefix("Bearer ")),
])
async def test_opencodes_own_key_reaches_its_vendor_only_through_the_gateway(
        variable: str, fake_of: Callable[[], LoopbackFake], model: str,
        key_of: Callable[[RecordedRequest], str | None]) -> None:
    data_dir = agents_data_dir("opencode")
    agent = get_agent("opencode").configured(model=model)
    route = agent.gateway_route(None, {variable: KEY})
    assert route is not None and route.variable == variable
    async with fake_of() as fake:
        # the vendor's path prefix is the fake's too (/v1): the gateway appends what opencode asks for
        gateway = CredentialGateway(str(URL(fake.base_url).origin()) + URL(route.upstream).path, KEY, route.places)
        sock = socket.create_server(("127.0.0.1", 0))
        await gateway.start(sock)
        try:
            routed = agent.through_gateway(f"http://127.0.0.1:{gateway.port}", route)
            assert isinstance(routed, OpencodeAgent)
            with agent_workspace("sesame-opencode-", routed.config_files()) as root:
                env = {"PATH": BASE_PATH, "HOME": str(root / "home"), "TMPDIR": str(root)}
                env |= routed.base_env(None) | {variable: gateway.placeholder}
                argv = routed.argv("say hello", model, bin_dir=agent_bin_dir("opencode", data_dir))
                lines = await run_cli(argv, env, root / "project", None)
        finally:
            await gateway.close()
    events = [e for line in lines for e in routed.parse_line(line)]
    assert any(e.kind == "message" and "Hello from the fake." in e.summary for e in events), lines
    assert fake.requests and all(key_of(r) == KEY for r in fake.requests)
    assert gateway.stats.requests == len(fake.requests) and gateway.stats.refused == 0
