"""The rep forms: a rep and their login are made and edited on one page.

The password is typed when the rep is created (or replaced later) and never
rendered back. The login of a rep who is also an admin (staff) is left to a
superuser: otherwise one organization admin could take over another's account.
"""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet

from routing.models import Rep

User = get_user_model()

_LOGIN_FIELDS = ("first_name", "last_name", "email", "login_enabled", "new_password")


def _password_input() -> forms.PasswordInput:
    return forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})


class _RepFormBase(forms.ModelForm):
    first_name = forms.CharField(max_length=150, required=False)
    last_name = forms.CharField(max_length=150, required=False)
    email = forms.EmailField(required=False, help_text="Where e-mail notifications go.")

    class Meta:
        model = Rep
        exclude = ("user",)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("email_notifications") and not cleaned.get("email"):
            self.add_error("email", "E-mail notifications need an e-mail address.")
        return cleaned

    def _check_password(self, field: str, user) -> None:
        password = self.cleaned_data.get(field)
        if password:
            try:
                password_validation.validate_password(password, user)
            except ValidationError as exc:
                self.add_error(field, exc)


class RepCreationForm(_RepFormBase):
    username = forms.CharField(
        max_length=150, validators=[User.username_validator], help_text="What they sign in with: letters, digits and @.+-_ only.",
    )
    password1 = forms.CharField(label="Password", strip=False, widget=_password_input(),
                                help_text="Set once here; it is never shown again.")
    password2 = forms.CharField(label="Password again", strip=False, widget=_password_input())

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        if User.objects.filter(username__iexact=username).exists():
            raise ValidationError(f"The username {username!r} is taken; choose another.")
        return username

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("password1") and cleaned.get("password2") and cleaned["password1"] != cleaned["password2"]:
            self.add_error("password2", "The two passwords differ.")
        else:
            self._check_password("password1", User(username=cleaned.get("username", ""), email=cleaned.get("email", ""),
                                                   first_name=cleaned.get("first_name", ""), last_name=cleaned.get("last_name", "")))
        return cleaned

    def create_user(self):
        data = self.cleaned_data
        return User.objects.create_user(
            username=data["username"], password=data["password1"], email=data["email"],
            first_name=data["first_name"], last_name=data["last_name"],
        )


class RepChangeForm(_RepFormBase):
    login_enabled = forms.BooleanField(
        required=False, help_text="Untick to stop them signing in and getting new leads; the leads they hold stay theirs.",
    )
    new_password = forms.CharField(required=False, strip=False, widget=_password_input(),
                                   help_text="Leave empty to keep the current password.")
    editor_is_superuser = True  # RepAdmin.get_form sets it per request

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        user = self.instance.user
        for name, value in (("first_name", user.first_name), ("last_name", user.last_name), ("email", user.email),
                            ("login_enabled", user.is_active)):
            self.fields[name].initial = value
        if user.is_staff and not self.editor_is_superuser:
            for name in (*_LOGIN_FIELDS, "role"):
                if name in self.fields:
                    self.fields[name].disabled = True
                    self.fields[name].help_text = "This rep is an admin: a Swiftex administrator changes their login and role."

    def clean(self):
        cleaned = super().clean()
        self._check_password("new_password", self.instance.user)
        return cleaned

    def update_user(self) -> None:
        user, data = self.instance.user, self.cleaned_data
        user.first_name, user.last_name, user.email, user.is_active = (
            data["first_name"], data["last_name"], data["email"], data["login_enabled"],
        )
        if data.get("new_password"):
            user.set_password(data["new_password"])
        user.save()


class TeamMemberFormSet(BaseInlineFormSet):
    def clean(self):
        super().clean()
        org_id = self.instance.organization_id
        for form in self.forms:
            rep = getattr(form, "cleaned_data", {}).get("rep")
            if rep is not None and org_id is not None and not form.cleaned_data.get("DELETE") and rep.organization_id != org_id:
                form.add_error("rep", f"{rep} is a rep of another organization; a team's members are its own organization's reps.")
