from django.urls import path

from directory import ocsp_views, pki_views

urlpatterns = [
    path("", pki_views.repository, name="pki-repository"),
    # The OCSP responder: POST here (with or without the slash, as clients append their
    # own), GET with the request in the path (RFC 6960 A.1).
    path("ocsp/", ocsp_views.responder, name="pki-ocsp"),
    path("ocsp", ocsp_views.responder),
    path("ocsp/<path:encoded>", ocsp_views.responder, name="pki-ocsp-get"),
    path("<slug:slug>.crt", pki_views.ca_certificate, name="pki-ca-certificate"),
    path("<slug:slug>.pem", pki_views.ca_certificate_pem, name="pki-ca-certificate-pem"),
    path("<slug:slug>.crl", pki_views.ca_crl, name="pki-ca-crl"),
    path("<slug:slug>-chain.p7b", pki_views.ca_chain, name="pki-ca-chain"),
]
