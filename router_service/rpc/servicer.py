"""The RouterService servicer: converts protobuf to domain, delegates, converts back.

No decisions are made here. Errors are domain exceptions raised by the
gateway; the error guard turns them into statuses.
"""

from __future__ import annotations

import grpc

from router_service.catalog import Catalog
from router_service.domain import ChatResult
from router_service.gateway import Deadline, Gateway
from router_service.rpc import convert
from router_service.spend import visible_caller
from sekha.router.v1 import router_service_pb2 as pb
from sekha.router.v1 import router_service_pb2_grpc as pb_grpc
from sekha_runtime.errors import UnimplementedError
from sekha_runtime.server.auth import current_caller


def _caller() -> str | None:
    """The API key id when auth is on; None lets the spend ledger use metadata["tenant"]."""
    caller = current_caller()
    return caller.key_id if caller.authenticated else None


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, gateway: Gateway, catalog: Catalog) -> None:
        """`gateway` is swapped for a new one by a config reload (`router_service.reload`)."""
        self.gateway = gateway
        self.catalog = catalog

    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteResponse:
        prefs, messages, inputs, max_tokens = convert.route_request_from_pb(request)
        decision = self.gateway.route(prefs, messages, inputs, max_tokens)
        return pb.RouteResponse(decision=convert.decision_to_pb(decision))

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        result = await self.gateway.chat(
            convert.chat_request_from_pb(request), Deadline.after(context.time_remaining()), _caller()
        )
        return convert.chat_response_to_pb(result)

    async def StreamChat(self, request: pb.StreamChatRequest, context: grpc.aio.ServicerContext) -> None:
        # Written with context.write, not yielded: an async-generator handler (and the error guard's
        # generator around it) would cost every chunk two more generator resumes.
        events = self.gateway.stream_chat(
            convert.chat_request_from_pb(request), Deadline.after(context.time_remaining()), _caller()
        )
        try:
            async for event in events:
                if isinstance(event, ChatResult):
                    await context.write(convert.chat_summary_to_pb(event))
                else:
                    await context.write(convert.stream_output_to_pb(event))
        finally:
            await events.aclose()  # closes the upstream request when the caller goes away

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        result = await self.gateway.embed(
            convert.embed_request_from_pb(request), Deadline.after(context.time_remaining()), _caller()
        )
        return convert.embed_response_to_pb(result)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        task = convert.TASK_FROM_PB.get(request.task) if request.task else None
        models, next_token = self.catalog.list_models(
            task=task,
            provider_id=request.provider_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListModelsResponse(
            models=[convert.model_to_pb(m) for m in models], next_page_token=next_token
        )

    async def GetProviderStatus(
        self, request: pb.GetProviderStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProviderStatusResponse:
        providers = self.catalog.provider_status(request.provider_id)
        response = pb.GetProviderStatusResponse(
            providers=[convert.provider_status_to_pb(p) for p in providers]
        )
        state = self.catalog.state_backend()
        if state is not None:
            response.state_backend.CopyFrom(convert.state_backend_to_pb(state))
        return response

    async def GetSpend(
        self, request: pb.GetSpendRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSpendResponse:
        spend = self.gateway.spend
        if spend is None:
            raise UnimplementedError("GetSpend: this router keeps no spend ledger")
        start, end, grouping, caller = convert.spend_request_from_pb(request, spend.wall_clock())
        requester = current_caller()
        caller = visible_caller(caller, requester.key_id, requester.authenticated, requester.admin)
        return convert.spend_report_to_pb(await spend.report(start, end, grouping, caller))
