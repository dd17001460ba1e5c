"""Web pages of the directory: /directory/."""

app_name = "directory"

urlpatterns: list = []
