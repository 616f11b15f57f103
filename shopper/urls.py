from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from costs import api as costs_api
from inventory import views as inventory_views
from inventory.api import InventoryViewSet, gpu_list
from sessions.agent_api import AgentBenchmarkView, AgentHeartbeatView, agent_script
from sessions.api import SessionViewSet
from sessions.consumers import RentalConsumer
from shopper import views
from shopper.metrics import metrics_view
from shopper.throttling import ThrottledLoginView

router = SimpleRouter(trailing_slash=False)
router.register("inventory", InventoryViewSet, basename="inventory")
router.register("sessions", SessionViewSet, basename="sessions")

api_urlpatterns = [
    path("health", views.health, name="api-health"),
    path("agent/heartbeat", AgentHeartbeatView.as_view(), name="agent-heartbeat"),
    path("agent/benchmark", AgentBenchmarkView.as_view(), name="agent-benchmark"),
    path("costs", costs_api.costs, name="api-costs"),
    path("gpus", gpu_list, name="api-gpus"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its script as a file and the template has no inline style: CSP.
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="shopper/swagger_ui.html"),
        name="api-docs",
    ),
    *router.urls,
]

urlpatterns = [
    path("metrics", metrics_view, name="metrics"),
    path("", views.home, name="home"),
    path("agent.py", agent_script, name="agent-script"),
    path("tokens/", views.tokens, name="tokens"),
    path("settings/", views.user_settings, name="settings"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token_revoke"),
    path("audit/", views.audit, name="audit"),
    path("offers/", inventory_views.offer_list, name="offer_list"),
    path("gpus/", inventory_views.gpu_compare, name="gpu_compare"),
    path("", include("sessions.urls")),
    path("costs/", include("costs.urls")),
    path("login/", ThrottledLoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_urlpatterns)),
]

websocket_urlpatterns: list = [path("ws/rentals/", RentalConsumer.as_asgi())]
