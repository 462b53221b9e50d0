<?php
// Signed pushes to Coyotes (see docs/SECURITY.md, "Signed producers").
// Copy this file into your application, then:
//
//   require 'coyotes-sign.php';
//   $redis->lPush('task:prepare:queue', coyotes_signed_entry(
//       ['task' => 'php artisan report:daily', 'chan' => 'default'],
//       'web-2026', getenv('COYOTES_SIGNING_SECRET')));
//
//   $body = http_build_query(['task' => 'php artisan report:daily']);
//   $headers = coyotes_signature_headers('POST', '/channels/default',
//       'application/x-www-form-urlencoded', $body, 'web-2026',
//       getenv('COYOTES_SIGNING_SECRET'));
//
// The key id and secret are a line of the daemon's -signature-keys file.

const COYOTES_SIGNATURE_VERSION = 'coyotes1';

/**
 * A prepare-queue entry signed with a key: the task's JSON is signed as the exact
 * text that is pushed, with the time, so no canonical JSON is needed.
 */
function coyotes_signed_entry(array $task, string $keyId, string $secret, ?int $now = null): string
{
    $payload = json_encode($task, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
    $ts = $now ?? time();
    $message = COYOTES_SIGNATURE_VERSION . "\n{$keyId}\n{$ts}\n{$payload}";
    return json_encode([
        'payload' => $payload,
        'key_id'  => $keyId,
        'ts'      => $ts,
        'sig'     => hash_hmac('sha256', $message, $secret),
    ], JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
}

/**
 * The headers that sign an HTTP push: the method, the path (with its query string,
 * if any), the Content-Type sent with it and the exact body bytes.
 */
function coyotes_signature_headers(string $method, string $path, string $contentType,
                                   string $body, string $keyId, string $secret,
                                   ?int $now = null): array
{
    $ts = $now ?? time();
    $message = COYOTES_SIGNATURE_VERSION . "\n{$keyId}\n{$ts}\n" . strtoupper($method)
        . " {$path}\n{$contentType}\n{$body}";
    return [
        'X-Coyotes-Key'       => $keyId,
        'X-Coyotes-Timestamp' => (string) $ts,
        'X-Coyotes-Signature' => hash_hmac('sha256', $message, $secret),
    ];
}
