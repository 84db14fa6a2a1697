//! The API's protobuf codec: tonic-prost's, except that a body which is not the
//! method's message is INVALID_ARGUMENT — the sender's fault, counted as a rejection
//! (`reason="malformed_message"`) — instead of tonic's INTERNAL, which this daemon
//! keeps for its own failures. `build.rs` names it as the generated code's codec.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::error::excerpt;
use crate::metrics as names;

/// [`ProstCodec`] with decode errors as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ApiCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ApiCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ApiCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ApiDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ApiDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// Decodes like tonic-prost; a malformed body is INVALID_ARGUMENT.
#[derive(Debug)]
pub struct ApiDecoder<U>(ProstDecoder<U>);

impl<U> Decoder for ApiDecoder<U>
where
    U: Message + Default + Send + 'static,
{
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            metrics::counter!(names::GRPC_REJECTED, "reason" => "malformed_message").increment(1);
            Status::invalid_argument(format!(
                "malformed protobuf message: {}",
                excerpt(status.message())
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
