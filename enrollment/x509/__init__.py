"""Pure X.509 work over cryptography: certificates, CSRs, CRLs, PKCS#12/#7 and CMS.

Nothing here imports Django; inputs and outputs are cryptography objects and dataclasses.
"""
