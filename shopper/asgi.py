import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopper.settings")
django_asgi_app = get_asgi_application()

# Imported after get_asgi_application(): consumers need the app registry loaded.
from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from inventory.fastpath import InventoryFastPath
from sessions.consumers import SameOriginValidator
from sessions.uptime import start_web_beat
from shopper.urls import websocket_urlpatterns

# A served web process records that it is up (sessions/uptime.py: the heartbeat grace after an
# outage). shopper.serve marks its children; a test importing this module starts nothing.
if os.environ.get("SHOPPER_SERVED") == "1":
    start_web_beat()

application = ProtocolTypeRouter(
    {
        # Daphne serves static files itself so `make run` needs no separate web server. The
        # inventory fast path answers cached menu pages before Django's handler (see its module).
        "http": InventoryFastPath(ASGIStaticFilesHandler(django_asgi_app)),
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
