from django.urls import path

from sessions import views

app_name = "sessions"

urlpatterns = [
    path("offers/<int:offer_id>/rent/", views.rental_rent, name="rent"),
    path("offers/<int:offer_id>/rent/estimate/", views.rental_rent_estimate, name="rent_estimate"),
    path("sessions/", views.rental_list, name="list"),
    path("sessions/<uuid:rental_id>/", views.rental_detail, name="detail"),
    path("sessions/<uuid:rental_id>/ssh-key/", views.rental_ssh_key, name="ssh_key"),
    path("sessions/<uuid:rental_id>/done/", views.rental_done, name="done"),
    path("sessions/<uuid:rental_id>/extend/", views.rental_extend, name="extend"),
    path("sessions/<uuid:rental_id>/shutdown/", views.rental_shutdown, name="shutdown"),
    path("sessions/<uuid:rental_id>/idle-stop/", views.rental_idle_stop, name="idle_stop"),
    path("keys/", views.sshkey_list, name="keys"),
    path("safety/", views.safety, name="safety"),
    path("safety/kill-switch/", views.safety_kill_switch, name="kill_switch"),
    path("safety/alerts/<int:alert_id>/resolve/", views.alert_resolve, name="alert_resolve"),
    path("safety/alerts/<int:alert_id>/destroy/", views.unscoped_destroy, name="unscoped_destroy"),
    path("keys/<int:key_id>/delete/", views.sshkey_delete, name="key_delete"),
    path("sessions/<uuid:rental_id>/rent-again/", views.rental_rent_again, name="rent_again"),
]
