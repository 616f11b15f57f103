from django.urls import path

from costs import views

app_name = "costs"

urlpatterns = [
    path("", views.spend, name="index"),
    path("export.csv", views.spend_export, name="export"),
]
