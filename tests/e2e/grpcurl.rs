//! grpcurl as the admin tool: reflection, health, Bind and Reveal, with no .proto files.

use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::harness::{ALICE, ALICE_CODE, Stack, grpcurl};

#[tokio::test]
async fn reflection_v1_lists_the_vault_service() {
    let stack = Stack::start();
    let channel = tonic::transport::Channel::from_shared(stack.server.endpoint()).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "vault.v1.AuthCodeVault"), "{names:?}");
}

#[test]
fn grpcurl_lists_by_reflection_and_calls_bind_and_reveal() {
    let stack = Stack::start();
    let s = &stack.server;
    let services = grpcurl::run(s, &["list"]);
    // grpcurl 1.8 speaks reflection v1alpha; v1 is checked with tonic's client below.
    for name in ["vault.v1.AuthCodeVault", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"] {
        assert!(services.contains(name), "{name} missing from:\n{services}");
    }
    let methods = grpcurl::run(s, &["list", "vault.v1.AuthCodeVault"]);
    for m in ["Bind", "Rotate", "Revoke", "Verify", "Reveal", "GetCredential", "ListCredentials", "RotateDataKey"] {
        assert!(methods.contains(&format!("vault.v1.AuthCodeVault.{m}")), "{m} missing");
    }
    let described = grpcurl::run(s, &["describe", "vault.v1.BindRequest"]);
    assert!(described.contains("auth_code"), "{described}");
    let health = grpcurl::run(s, &["grpc.health.v1.Health/Check"]);
    assert!(health.contains("\"SERVING\""), "{health}");

    let admin = format!("authorization: Bearer {}", stack.admin_token);
    let thunderbird = format!("authorization: Bearer {}", stack.client_token("thunderbird"));
    let bind = format!(r#"{{"mailbox":"{ALICE}","client":"thunderbird","auth_code":"{ALICE_CODE}"}}"#);
    let out = grpcurl::call(s, &["-H", &admin, "-d", &bind], &["vault.v1.AuthCodeVault/Bind"]);
    assert!(out.contains("\"PROBE_OUTCOME_ACCEPTED\"") && out.contains("\"CREDENTIAL_STATE_ACTIVE\""), "{out}");
    assert!(!out.contains(ALICE_CODE), "Bind echoed the code:\n{out}");

    let pair = format!(r#"{{"mailbox":"{ALICE}","client":"thunderbird"}}"#);
    let out = grpcurl::call(s, &["-H", &thunderbird, "-d", &pair], &["vault.v1.AuthCodeVault/Reveal"]);
    assert!(out.contains(&format!("\"authCode\": \"{ALICE_CODE}\"")), "{out}");
    assert!(out.contains("\"imapHost\": \"imap.sina.com\""), "{out}");

    // The rest of the lifecycle, as an admin would drive it: a new code, the old one still
    // accepted by the provider (so the old-code probe says to delete it).
    let new_code = "CANARYalice00009";
    stack.dovecot.set_extra_codes(&[(ALICE, new_code)]);
    let rotate =
        format!(r#"{{"mailbox":"{ALICE}","client":"thunderbird","new_auth_code":"{new_code}","expected_version":1}}"#);
    let out = grpcurl::call(s, &["-H", &admin, "-d", &rotate], &["vault.v1.AuthCodeVault/Rotate"]);
    assert!(out.contains("\"version\": \"2\"") && out.contains("previousCodeProbe"), "{out}");
    assert!(!out.contains(new_code) && !out.contains(ALICE_CODE), "Rotate echoed a code:\n{out}");
    let out = grpcurl::call(s, &["-H", &admin, "-d", &pair], &["vault.v1.AuthCodeVault/Verify"]);
    assert!(out.contains("PROBE_OUTCOME_ACCEPTED"), "{out}");
    let out = grpcurl::call(s, &["-H", &admin, "-d", &pair], &["vault.v1.AuthCodeVault/GetCredential"]);
    assert!(out.contains("\"provider\": \"sina\""), "{out}");
    let out = grpcurl::call(
        s,
        &["-H", &admin, "-d", r#"{"include_revoked":true}"#],
        &["vault.v1.AuthCodeVault/ListCredentials"],
    );
    assert!(out.contains("thunderbird") && !out.contains(ALICE_CODE), "{out}");
    let revoke = format!(r#"{{"mailbox":"{ALICE}","client":"thunderbird","reason":"left the team"}}"#);
    let out = grpcurl::call(s, &["-H", &admin, "-d", &revoke], &["vault.v1.AuthCodeVault/Revoke"]);
    assert!(out.contains("CREDENTIAL_STATE_REVOKED") && out.contains("left the team"), "{out}");
    let out = grpcurl::output(s, &["-H", &thunderbird, "-d", &pair], &["vault.v1.AuthCodeVault/Reveal"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"));
    // Data-key rotation takes no fields, as the README shows it.
    let out = grpcurl::call(s, &["-H", &admin], &["vault.v1.AuthCodeVault/RotateDataKey"]);
    assert!(out.contains("\"activeKeyId\": 2") && out.contains("\"retiredKeyIds\""), "{out}");
    let out = grpcurl::output(s, &["-H", &thunderbird], &["vault.v1.AuthCodeVault/RotateDataKey"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"), "{out:?}");

    // Errors come back as gRPC statuses grpcurl can show.
    let short = format!(r#"{{"mailbox":"{ALICE}","client":"thunderbird","auth_code":"hunter2"}}"#);
    let out = grpcurl::output(s, &["-H", &admin, "-d", &short], &["vault.v1.AuthCodeVault/Bind"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("InvalidArgument") && text.contains("login password") && !text.contains("hunter2"), "{text}");
    // The rich details decode too (reflection serves google.rpc's descriptors).
    assert!(text.contains("google.rpc.BadRequest") && text.contains(r#""field":"auth_code""#), "{text}");
    // Without a token the vault answers Unauthenticated; list and describe above needed none.
    let out = grpcurl::output(s, &["-d", &bind], &["vault.v1.AuthCodeVault/Bind"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
}
