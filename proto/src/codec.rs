//! The codec the service and its client are generated with: prost's, except for the code of a
//! message that does not decode. A request that does not decode is the caller's fault
//! (`INVALID_ARGUMENT`, as for any other malformed input); a response that does not decode stays
//! `INTERNAL`.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The code for a message of this type that does not decode.
pub trait Undecodable {
    const CODE: Code;
}

macro_rules! undecodable {
    ($code:expr => $($t:ty),+) => { $(impl Undecodable for $t { const CODE: Code = $code; })+ };
}

undecodable!(Code::InvalidArgument =>
    crate::BindRequest, crate::RotateRequest, crate::RevokeRequest, crate::VerifyRequest,
    crate::RevealRequest, crate::GetCredentialRequest, crate::ListCredentialsRequest,
    crate::ListUnusedClientsRequest, crate::ListAuditEventsRequest, crate::RotateDataKeyRequest);
undecodable!(Code::Internal =>
    crate::BindResponse, crate::RotateResponse, crate::RevokeResponse, crate::VerifyResponse,
    crate::RevealResponse, crate::Credential, crate::ListCredentialsResponse,
    crate::ListUnusedClientsResponse, crate::ListAuditEventsResponse, crate::RotateDataKeyResponse);

/// prost's encoding, and its decoding with [`Undecodable::CODE`] on failure.
#[derive(Debug, Clone)]
pub struct VaultCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for VaultCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for VaultCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Undecodable + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = VaultDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        VaultDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

/// prost's decoder, answering [`Undecodable::CODE`] for bytes that are not a `U`.
#[derive(Debug)]
pub struct VaultDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + Undecodable> Decoder for VaultDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost's own decoder fails only on bytes that do not decode (the message names the
        // field, never its value).
        self.0.decode(buf).map_err(|s| Status::new(U::CODE, s.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
