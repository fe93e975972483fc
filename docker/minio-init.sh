#!/bin/sh
# One-shot MinIO set-up, run by the `minio-init` service (image minio/mc) after MinIO is
# healthy. Idempotent: safe on every `docker compose up`.
#
# 1. the bucket the API stores blobs in (private: no anonymous access);
# 2. a service account for the API that may use only that bucket, so the API never holds
#    the MinIO root credentials.
#
# The minio/mc image has /bin/sh but no grep (nor much else): checks use shell `case` only.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${MINIO_BUCKET:?}"
: "${MINIO_APP_ACCESS_KEY:?}" "${MINIO_APP_SECRET_KEY:?}"
MINIO_ENDPOINT="${MINIO_ENDPOINT:-http://minio:9000}"
POLICY="${MINIO_APP_POLICY:-alliance-api}"

mc alias set target "$MINIO_ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc ready target

mc mb --ignore-existing "target/${MINIO_BUCKET}"
mc anonymous set none "target/${MINIO_BUCKET}"

policy_file=/tmp/alliance-api-policy.json
cat >"$policy_file" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::${MINIO_BUCKET}"]
    },
    {
      "Effect": "Allow",
      "Action": [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"
      ],
      "Resource": ["arn:aws:s3:::${MINIO_BUCKET}/*"]
    }
  ]
}
JSON
# `policy create` replaces a policy of the same name, so an edited bucket name takes effect.
mc admin policy create target "$POLICY" "$policy_file"
rm -f "$policy_file"

# `user add` on an existing user only resets its secret key: idempotent.
mc admin user add target "$MINIO_APP_ACCESS_KEY" "$MINIO_APP_SECRET_KEY"

# Older mc releases fail when the policy is already attached; treat that as done.
if ! attach_out="$(mc admin policy attach target "$POLICY" --user "$MINIO_APP_ACCESS_KEY" 2>&1)"; then
    case "$attach_out" in
        *"already in effect"*) ;;
        *) echo "$attach_out" >&2; exit 1 ;;
    esac
fi

echo "minio-init: bucket ${MINIO_BUCKET} and user ${MINIO_APP_ACCESS_KEY} (policy ${POLICY}) are ready"
