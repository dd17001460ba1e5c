"""Thin Celery tasks: ids in, one service call, retries owned here.

With no CELERY_BROKER_URL, Celery runs tasks eagerly, so queueing on commit runs them
inline right after the transaction: the embedded default needs no Redis.
"""

from __future__ import annotations

import logging

from celery import shared_task

from django.db import OperationalError, transaction

from enrollment import services
from enrollment.models import CertificateAuthority

logger = logging.getLogger(__name__)


@shared_task(
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=8,
)
def crl_publish_task(ca_id: int) -> int:
    """Regenerate one CA's CRL; idempotent: a later run covers everything an earlier one did."""
    ca = CertificateAuthority.objects.get(pk=ca_id)
    return services.crl_publish(ca=ca).number


def _send_crl_publish(ca_id: int) -> None:
    try:
        crl_publish_task.delay(ca_id)
    except Exception:
        # The revocation is committed; the scheduled run brings the CRL up to date.
        logger.exception("Could not queue the CRL for CA %s; the next scheduled run will.", ca_id)


def crl_publish_on_commit(ca_id: int) -> None:
    """Queue a CRL regeneration once the current transaction commits."""
    transaction.on_commit(lambda: _send_crl_publish(ca_id), robust=True)
