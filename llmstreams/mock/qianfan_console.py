"""The Qianfan console route the official SDK calls when it authenticates with AK/SK.

`qianfan` refreshes its model -> endpoint table from `POST /wenxinworkshop/service/list` on the
console host (`QIANFAN_CONSOLE_API_BASE_URL`); pointing that at the mock too keeps every request
local. Console answers carry a `log_id` where the inference API carries an `id`.
"""

from __future__ import annotations

from aiohttp import web

from llmstreams.mock.context import MockContext
from llmstreams.mock.qianfan import API_PREFIX
from llmstreams.mock.qianfan_auth import bce_signature_accepted, is_bce_authorization
from llmstreams.mock.text import request_digest
from llmstreams.mock.vendor_errors import QIANFAN_MESSAGES

SERVICE_LIST_PATH = "/wenxinworkshop/service/list"

# Preset services as (name, "kind/endpoint"), the public model -> endpoint mapping.
_PRESET_SERVICES = (
    ("ERNIE-Bot", "chat/completions"),
    ("ERNIE-Bot-turbo", "chat/eb-instant"),
    ("ERNIE-Bot-4", "chat/completions_pro"),
    ("ERNIE-Speed-8K", "chat/ernie_speed"),
    ("ERNIE-Lite-8K", "chat/ernie-lite-8k"),
    ("BLOOMZ-7B", "chat/bloomz_7b1"),
    ("Llama-2-7B-Chat", "chat/llama_2_7b"),
    ("Llama-2-13B-Chat", "chat/llama_2_13b"),
    ("Llama-2-70B-Chat", "chat/llama_2_70b"),
    ("Meta-Llama-3-8B", "chat/llama_3_8b"),
    ("ChatGLM2-6B-32K", "chat/chatglm2_6b_32k"),
    ("AquilaChat-7B", "chat/aquilachat_7b"),
    ("Mixtral-8x7B-Instruct", "chat/mixtral_8x7b_instruct"),
    ("CodeLlama-7b-Instruct", "completions/codellama_7b_instruct"),
    ("SQLCoder-7B", "completions/sqlcoder_7b"),
)


def add_routes(app: web.Application, context: MockContext) -> None:
    async def service_list(request: web.Request) -> web.Response:
        context.stats.request("qianfan.service_list")
        body = await request.read()
        log_id = str(int.from_bytes(request_digest(request.path, body)[:6], "big"))
        if not is_bce_authorization(request) or not bce_signature_accepted(
            request, context.credentials
        ):
            return web.json_response(
                {"log_id": log_id, "error_code": 14, "error_msg": QIANFAN_MESSAGES[14]}
            )
        origin = f"{request.scheme}://{request.host}"
        services = [
            {
                "name": name,
                "url": f"{origin}{API_PREFIX}/{route}",
                "apiType": route.split("/")[0],
                "chargeStatus": "OPENED",
                "versionList": [{"trainType": name, "serviceStatus": "Done"}],
            }
            for name, route in _PRESET_SERVICES
        ]
        return web.json_response({"log_id": log_id, "result": {"common": services, "custom": []}})

    app.router.add_post(SERVICE_LIST_PATH, service_list)
