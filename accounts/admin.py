from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from accounts.models import User


@admin.register(User)
class PortalUserAdmin(UserAdmin):
    fieldsets = (
        *UserAdmin.fieldsets,
        ("Certificate attributes", {"fields": ("display_name", "organizational_unit")}),
    )
    list_display = (
        "username",
        "email",
        "first_name",
        "last_name",
        "organizational_unit",
        "is_staff",
    )
