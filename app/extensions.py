"""Extension objects, created unbound and wired to an app in ``create_app``."""

from flask_socketio import SocketIO

socketio = SocketIO()
