-- A key's certificate chain, PEM, leaf first: a Key Vault certificate's `cer` and
-- chain, or a chain an operator attached. Served at GET /v1/keys/{name}/certificate
-- for formats that embed the signer's certificate. NULL: the key has none.
ALTER TABLE keys ADD COLUMN certificate_pem TEXT;
