"""Forms of the community pages. They parse and check input; services do the writing."""

from __future__ import annotations

from django import forms
from django.contrib.auth import password_validation

from apps.accounts.models import Team, Volunteer


class JoinForm(forms.Form):
    username = forms.CharField(
        max_length=150, help_text="Letters, digits and @ . + - _ only; you log in with it.",
        widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True}))
    email = forms.EmailField(
        help_text="For password resets only; never shown or exported.",
        widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    display_name = forms.CharField(
        max_length=Volunteer._meta.get_field("display_name").max_length, required=False,
        help_text="Shown on leaderboards; your user name if left blank.")
    country = forms.CharField(max_length=2, required=False,
                              help_text="Optional two-letter code, e.g. DE.")
    password1 = forms.CharField(
        label="Password", strip=False,
        help_text=password_validation.password_validators_help_text_html(),
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(
        label="Password again", strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def clean(self) -> dict:
        cleaned = super().clean()
        first, second = cleaned.get("password1"), cleaned.get("password2")
        if first and second and first != second:
            self.add_error("password2", "The two passwords differ.")
        return cleaned


class TeamCreateForm(forms.Form):
    name = forms.CharField(max_length=Team._meta.get_field("name").max_length,
                           widget=forms.TextInput(attrs={"autofocus": True}))
    description = forms.CharField(
        required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Optional: who you are, what unites the team.")


class TeamSearchForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Team name")
