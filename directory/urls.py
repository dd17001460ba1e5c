from django.urls import path

from directory import pki_views

urlpatterns = [
    path("", pki_views.repository, name="pki-repository"),
    path("<slug:slug>.crt", pki_views.ca_certificate, name="pki-ca-certificate"),
    path("<slug:slug>.pem", pki_views.ca_certificate_pem, name="pki-ca-certificate-pem"),
    path("<slug:slug>.crl", pki_views.ca_crl, name="pki-ca-crl"),
    path("<slug:slug>-chain.p7b", pki_views.ca_chain, name="pki-ca-chain"),
]
